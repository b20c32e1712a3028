// gaps_rows_bench.c: the measurement behind the gap-coded kernel's row
// pairing (internal/kernels/gen_asm.go, gapsKernels): all cores (OpenMP),
// NM 4096x4096 bf16 matrices at 10% random density in the gap-coded form
// (16 one-byte gaps prefix-summed into columns, x gathered, 16 bf16 values
// per step, both streams prefetched 1024 entries ahead), read from memory
// (NM=200: ~1 GB), with the rows taken
//   one at a time;
//   in pairs DIST rows apart (row i with i+DIST, one step of each in turn);
//   in pairs half the matrix apart (i with i+2048: what the kernel does);
//   four at a time, a quarter apart;
//   in pairs half apart without the gather (the two streams alone);
//   in pairs half apart from one interleaved stream per row (blocks of 16
//   gaps + 16 values: a format the packed checkpoint does not use).
// Prints entries/s and GB/s per form, three rounds; the checksums keep the
// work alive. On the 2-core Intel host (G entries/s, two runs): one row
// 6.17-6.26, pairs 32 apart 5.82-5.85, pairs half apart 6.56, four 6.72-7.02,
// pairs without the gather 9.57-9.59 (28.8 GB/s of the 32 the probe
// reads), interleaved 6.17-6.28. The numbers move with where the matrices
// land (an earlier version of this program, allocating no interleaved
// copy, read 6.0-6.3 / 7.0-7.5 one row / pairs half apart): the streams
// alone are far from the bandwidth; the gather (microcoded on this host)
// and its overlap with the misses set the rate.
//
//   gcc -O2 -march=native -fopenmp -o /tmp/grb scripts/gaps_rows_bench.c && /tmp/grb 200 32
//
// Needs AVX-512 F/BW. A benchmark, never on the product path.
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { R = 4096, C = 4096, PF = 1024 };
static int DIST = 32;

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
	int64_t *rowptr;  // R+1 entry offsets
	uint8_t *gaps;    // one per entry (no fillers needed: gaps < 256 here)
	uint16_t *values; // bf16 bits
	uint8_t *blocks;  // the interleaved form: per row, blocks of 16 gaps + 16 values (48 bytes)
	int64_t *rowblk;  // R+1 block offsets
} matrix;

static inline __m512i prefix(__m512i d) {
	const __m512i z = _mm512_setzero_si512();
	d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, z, 15));
	d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, z, 14));
	d = _mm512_add_epi32(d, _mm512_alignr_epi32(d, z, 12));
	return _mm512_add_epi32(d, _mm512_alignr_epi32(d, z, 8));
}

// A row in flight is four locals: its next entry q, its end e, its last
// column base (all lanes) and its lane sums acc. The steppers are macros
// over them so the compiler keeps them in registers (passing a struct by
// pointer ran 15% slower, through memory).
#define ROW(r, i) int64_t r##q = m->rowptr[i], r##e = m->rowptr[(i) + 1]; __m512i r##base = _mm512_set1_epi32(-1); __m512 r##acc = _mm512_setzero_ps()
#define MASK(r) __mmask16 k = r##e - r##q >= 16 ? 0xffff : (__mmask16)((1u << (r##e - r##q)) - 1)

// GATHER: one step of 16 entries (masked at the row's end).
#define GATHER(r) do { MASK(r);                                                                    \
	_mm_prefetch((const char *)(m->gaps + r##q + PF), _MM_HINT_T0);                                  \
	_mm_prefetch((const char *)(m->values + r##q + PF), _MM_HINT_T0);                                \
	__m512i d = _mm512_maskz_cvtepu8_epi32(k, _mm_maskz_loadu_epi8(k, m->gaps + r##q));             \
	d = _mm512_add_epi32(prefix(d), r##base);                                                        \
	r##base = _mm512_permutexvar_epi32(last, d);                                                      \
	__m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, d, x, 4);                          \
	__m512i v = _mm512_maskz_cvtepu16_epi32(k, _mm256_maskz_loadu_epi16(k, m->values + r##q));      \
	r##acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xv, r##acc);            \
	r##q += 16; } while (0)

// STREAMS: the same bytes read, no gather.
#define STREAMS(r) do { MASK(r);                                                                   \
	_mm_prefetch((const char *)(m->gaps + r##q + PF), _MM_HINT_T0);                                  \
	_mm_prefetch((const char *)(m->values + r##q + PF), _MM_HINT_T0);                                \
	__m512i d = _mm512_maskz_cvtepu8_epi32(k, _mm_maskz_loadu_epi8(k, m->gaps + r##q));             \
	__m512i v = _mm512_maskz_cvtepu16_epi32(k, _mm256_maskz_loadu_epi16(k, m->values + r##q));      \
	r##acc = _mm512_add_ps(r##acc, _mm512_castsi512_ps(_mm512_add_epi32(d, _mm512_slli_epi32(v, 16)))); \
	r##q += 16; } while (0)

// INTERLEAVED: GATHER over the interleaved blocks (q counts entries from
// the row's first block there).
#define INTERLEAVED(r) do { MASK(r);                                                               \
	const uint8_t *p = m->blocks + r##q / 16 * 48;                                                   \
	_mm_prefetch((const char *)(p + 3 * PF), _MM_HINT_T0);                                           \
	__m512i d = _mm512_maskz_cvtepu8_epi32(k, _mm_maskz_loadu_epi8(k, p));                          \
	d = _mm512_add_epi32(prefix(d), r##base);                                                        \
	r##base = _mm512_permutexvar_epi32(last, d);                                                      \
	__m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, d, x, 4);                          \
	__m512i v = _mm512_maskz_cvtepu16_epi32(k, _mm256_maskz_loadu_epi16(k, (const uint16_t *)(p + 16))); \
	r##acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(v, 16)), xv, r##acc);            \
	r##q += 16; } while (0)

#define BLOCKS(r, i) (r##e = r##e - r##q + m->rowblk[i] * 16, r##q = m->rowblk[i] * 16)

static float one(const matrix *m, int i, const float *x) {
	const __m512i last = _mm512_set1_epi32(15);
	ROW(a, i);
	while (aq < ae) GATHER(a);
	return _mm512_reduce_add_ps(aacc);
}

// pair runs rows i and i + dist one step each in turn.
#define PAIR(name, S, init)                                                        \
	static float name(const matrix *m, int i, int dist, const float *x) {          \
		const __m512i last = _mm512_set1_epi32(15);                                \
		(void)last; (void)x;                                                       \
		ROW(a, i); ROW(b, i + dist);                                               \
		init;                                                                      \
		while (aq < ae && bq < be) { S(a); S(b); }                                 \
		while (aq < ae) S(a);                                                      \
		while (bq < be) S(b);                                                      \
		return _mm512_reduce_add_ps(aacc) + _mm512_reduce_add_ps(bacc);            \
	}
PAIR(pair, GATHER, (void)0)
PAIR(pair_streams, STREAMS, ((void)abase, (void)bbase))
PAIR(pair_interleaved, INTERLEAVED, (BLOCKS(a, i), BLOCKS(b, i + dist)))

static float four(const matrix *m, int i, int dist, const float *x) {
	const __m512i last = _mm512_set1_epi32(15);
	ROW(a, i); ROW(b, i + dist); ROW(c, i + 2 * dist); ROW(d_, i + 3 * dist);
	while (aq < ae && bq < be && cq < ce && d_q < d_e) { GATHER(a); GATHER(b); GATHER(c); GATHER(d_); }
	while (aq < ae) GATHER(a);
	while (bq < be) GATHER(b);
	while (cq < ce) GATHER(c);
	while (d_q < d_e) GATHER(d_);
	return _mm512_reduce_add_ps(aacc) + _mm512_reduce_add_ps(bacc) + _mm512_reduce_add_ps(cacc) + _mm512_reduce_add_ps(d_acc);
}

static float rows(const matrix *m, int i, int dist, int k, int kind, const float *x) {
	if (k == 1) return one(m, i, x);
	if (k == 4) return four(m, i, dist, x);
	return kind == 0 ? pair(m, i, dist, x) : kind == 1 ? pair_streams(m, i, dist, x) : pair_interleaved(m, i, dist, x);
}

int main(int argc, char **argv) {
	int NM = argc > 1 ? atoi(argv[1]) : 200;
	if (argc > 2) DIST = atoi(argv[2]);
	const double density = 0.1;
	float *x = aligned_alloc(64, C * sizeof(float));
	for (int j = 0; j < C; j++) x[j] = (float)(rand() % 100) / 100.f;
	matrix *ms = calloc(NM, sizeof *ms);
#pragma omp parallel for
	for (int t = 0; t < NM; t++) {
		matrix *m = &ms[t];
		unsigned seed = 7 * t + 1;
		size_t cap = (size_t)(R * (double)C * density * 1.2) + 64;
		m->values = aligned_alloc(64, (cap * 2 + 63) / 64 * 64);
		m->gaps = aligned_alloc(64, (cap + 63) / 64 * 64);
		m->blocks = aligned_alloc(64, ((cap / 16 + R + 1) * 48 + 63) / 64 * 64);
		m->rowptr = malloc((R + 1) * sizeof(int64_t));
		m->rowblk = malloc((R + 1) * sizeof(int64_t));
		int64_t n = 0, nb = 0;
		for (int i = 0; i < R; i++) {
			m->rowptr[i] = n;
			m->rowblk[i] = nb;
			int prev = -1;
			int64_t n0 = n;
			for (int j = 0; j < C; j++) {
				if (rand_r(&seed) >= density * RAND_MAX || j - prev > 255) continue;
				m->values[n] = (uint16_t)(0x3f80 + rand_r(&seed) % 64);
				m->gaps[n++] = (uint8_t)(j - prev);
				prev = j;
			}
			for (int64_t q = n0; q < n; q++) {
				uint8_t *b = m->blocks + (nb + (q - n0) / 16) * 48;
				b[(q - n0) % 16] = m->gaps[q];
				((uint16_t *)(b + 16))[(q - n0) % 16] = m->values[q];
			}
			nb += (n - n0 + 15) / 16;
		}
		m->rowptr[R] = n;
		m->rowblk[R] = nb;
	}
	double bytes = 0;
	for (int t = 0; t < NM; t++) bytes += 3.0 * ms[t].rowptr[R];
	printf("%d matrices, %.0f MB in the gap-coded form, %d threads, DIST %d\n", NM, bytes / 1e6, omp_get_max_threads(), DIST);
	// form: rows per call k, their distance, the stepper; the rows i that
	// start a call.
	struct { const char *name; int k, dist, kind; } forms[] = {
		{"one row at a time", 1, 0, 0}, {"pairs DIST apart", 2, -1, 0}, {"pairs half apart", 2, R / 2, 0},
		{"four a quarter apart", 4, R / 4, 0}, {"pairs, no gather", 2, R / 2, 1}, {"pairs, interleaved", 2, R / 2, 2},
	};
	for (int round = 0; round < 3; round++) {
		for (int f = 0; f < 6; f++) {
			int k = forms[f].k, dist = forms[f].dist < 0 ? DIST : forms[f].dist;
			int calls = R / k;
			double sum = 0, t0 = now();
			for (int t = 0; t < NM; t++) {
#pragma omp parallel for reduction(+ : sum) schedule(static)
				for (int c = 0; c < calls; c++) {
					// call c's first row: c, or for rows dist apart the c-th
					// row of the blocks of dist rows that start a group.
					int i = k == 1 ? c : (c / dist) * dist * k + c % dist;
					sum += rows(&ms[t], i, dist, k, forms[f].kind, x);
				}
			}
			double s = now() - t0;
			printf("%-22s %.2f G entries/s  %.1f GB/s  [%g]\n", forms[f].name, bytes / 3 / s / 1e9, bytes / s / 1e9, sum);
		}
		printf("\n");
	}
	return 0;
}
