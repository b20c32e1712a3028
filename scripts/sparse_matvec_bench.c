// sparse_matvec_bench.c: the measurement behind the packed format's choice
// of encodings (README, "Sparse checkpoints and decoding"): one core, a
// 4096x4096 bf16 matrix-vector product read from memory (32 matrices used in
// turn, ~10x the L2), random unstructured sparsity, in the bitmap form (one
// masked expand-load of 32 columns per step, as internal/kernels) and the
// gap-coded form (16 one-byte gaps prefix-summed into columns, x gathered),
// the latter with and without software prefetch, and the gap-coded form
// without a gather (scalar loads of x and scalar FMAs, four accumulators,
// prefetched: the alternative where VGATHERDPS is microcoded, as on hosts
// with the GDS mitigation). Prints columns/s (dense positions per second)
// per form; the checksums keep the work alive.
//
//   gcc -O2 -march=native -o /tmp/smb scripts/sparse_matvec_bench.c && /tmp/smb 0.1 0.2 0.5
//
// Needs AVX-512 F/BW/VBMI2. A benchmark, never on the product path.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { R = 4096, C = 4096, NM = 32, REPS = 64 };

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
	uint32_t *bitmap;  // R x C/32 words
	uint16_t *values;  // kept values, row-major (bf16 bits)
	int64_t *rowptr;   // R+1
	uint8_t *gaps;     // per kept value (no fillers needed: gaps < 256 here)
} matrix;

static float bitmap_row(const matrix *m, int i, const float *x) {
	const uint16_t *p = m->values + m->rowptr[i];
	const uint32_t *w = m->bitmap + (size_t)i * (C / 32);
	__m512 a0 = _mm512_setzero_ps(), a1 = a0;
	for (int c = 0; c < C / 32; c++) {
		__mmask32 k = w[c];
		__m512i e = _mm512_maskz_expandloadu_epi16(k, p);
		p += __builtin_popcount(k);
		__m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(e, 16));
		__m512 hi = _mm512_castsi512_ps(_mm512_and_si512(e, _mm512_set1_epi32((int)0xffff0000)));
		a0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + c * 32), a0);
		a1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + c * 32 + 16), a1);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static float gaps_row(const matrix *m, int i, const float *x, int prefetch) {
	const __m512i zero = _mm512_setzero_si512(), last = _mm512_set1_epi32(15);
	__m512 acc = _mm512_setzero_ps();
	__m512i base = _mm512_set1_epi32(-1);
	for (int64_t q = m->rowptr[i]; q < m->rowptr[i + 1]; q += 16) {
		int64_t n = m->rowptr[i + 1] - q;
		__mmask16 k = n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
		if (prefetch) {
			_mm_prefetch((const char *)(m->gaps + q + 1024), _MM_HINT_T0);
			_mm_prefetch((const char *)(m->values + q + 1024), _MM_HINT_T0);
		}
		__m512i d = _mm512_maskz_cvtepu8_epi32(k, _mm_maskz_loadu_epi8(k, m->gaps + q));
		d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 15));
		d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 14));
		d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 12));
		d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, zero, 8));
		d = _mm512_add_epi32(d, base);
		base = _mm512_permutexvar_epi32(last, d);
		__m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, d, x, 4);
		__m512i v = _mm512_maskz_cvtepu16_epi32(k, _mm256_maskz_loadu_epi16(k, m->values + q));
		acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xv, acc);
	}
	return _mm512_reduce_add_ps(acc);
}

// bf widens bf16 bits to float32.
static inline float bf(uint16_t h) { union { uint32_t u; float f; } c = {(uint32_t)h << 16}; return c.f; }

// scalar_row is gaps_row without the gather: one scalar x load and FMA per
// kept weight.
static float scalar_row(const matrix *m, int i, const float *x) {
	float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	int col = -1;
	int64_t q = m->rowptr[i], end = m->rowptr[i + 1];
	const uint8_t *g = m->gaps;
	const uint16_t *v = m->values;
	for (; q + 4 <= end; q += 4) {
		if ((q & 63) == 0) {
			_mm_prefetch((const char *)(g + q + 1024), _MM_HINT_T0);
			_mm_prefetch((const char *)(v + q + 1024), _MM_HINT_T0);
			_mm_prefetch((const char *)(v + q + 1024 + 32), _MM_HINT_T0);
		}
		col += g[q]; a0 += bf(v[q]) * x[col];
		col += g[q + 1]; a1 += bf(v[q + 1]) * x[col];
		col += g[q + 2]; a2 += bf(v[q + 2]) * x[col];
		col += g[q + 3]; a3 += bf(v[q + 3]) * x[col];
	}
	for (; q < end; q++) { col += g[q]; a0 += bf(v[q]) * x[col]; }
	return (a0 + a1) + (a2 + a3);
}

int main(int argc, char **argv) {
	float *x = aligned_alloc(64, C * sizeof(float));
	for (int j = 0; j < C; j++) x[j] = (float)(rand() % 100) / 100.f;
	for (int a = 1; a < argc; a++) {
		double density = atof(argv[a]);
		matrix *ms = calloc(NM, sizeof *ms);
		for (int t = 0; t < NM; t++) {
			matrix *m = &ms[t];
			size_t cap = (size_t)(R * (double)C * density * 1.2) + 64;
			m->bitmap = calloc((size_t)R * C / 32, 4);
			m->values = malloc(cap * 2);
			m->gaps = malloc(cap);
			m->rowptr = malloc((R + 1) * sizeof(int64_t));
			int64_t n = 0;
			for (int i = 0; i < R; i++) {
				m->rowptr[i] = n;
				int prev = -1;
				for (int j = 0; j < C; j++) {
					if (rand() >= density * RAND_MAX || j - prev > 255) continue;
					m->bitmap[(size_t)i * (C / 32) + j / 32] |= 1u << (j % 32);
					m->values[n] = (uint16_t)(0x3f80 + rand() % 64);
					m->gaps[n++] = (uint8_t)(j - prev);
					prev = j;
				}
			}
			m->rowptr[R] = n;
		}
		for (int round = 0; round < 3; round++) {
			double t[4], sum[4] = {0};
			for (int form = 0; form < 4; form++) {
				double t0 = now();
				for (int r = 0; r < REPS; r++)
					for (int i = 0; i < R; i++)
						sum[form] += form == 0 ? bitmap_row(&ms[r % NM], i, x) : form == 3 ? scalar_row(&ms[r % NM], i, x) : gaps_row(&ms[r % NM], i, x, form == 2);
				t[form] = now() - t0;
			}
			double cols = (double)REPS * R * C;
			printf("density %.2f: bitmap %.1f G columns/s, gaps %.1f, gaps+prefetch %.1f, scalar %.1f  [%g %g %g %g]\n", density,
			       cols / t[0] / 1e9, cols / t[1] / 1e9, cols / t[2] / 1e9, cols / t[3] / 1e9, sum[0], sum[1], sum[2], sum[3]);
		}
	}
	return 0;
}
