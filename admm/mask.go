// Package admm prunes: Elsa / Elsa-L (surrogate-free ADMM, docs/design.md) and the
// one-shot baselines users compare against (magnitude, Wanda, SparseGPT),
// in unstructured and N:M form. It works on float32 matrices handed to it
// by the stream pipeline and never touches files.
package admm

import (
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/elsa-stream/elsa-stream/model"
)

// Pattern is the sparsity pattern: unstructured, or N:M (keep N of every M
// consecutive input columns in each row).
type Pattern struct{ N, M int }

// Unstructured is the zero Pattern.
var Unstructured = Pattern{}

// ParsePattern parses "unstructured", "2:4", "4:8", ...
func ParsePattern(s string) (Pattern, error) {
	if s == "" || s == "unstructured" {
		return Unstructured, nil
	}
	a, b, ok := strings.Cut(s, ":")
	n, err1 := strconv.Atoi(a)
	m, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n <= 0 || m <= n {
		return Pattern{}, fmt.Errorf("pattern %q: want unstructured or N:M with 0 < N < M (2:4, 4:8)", s)
	}
	return Pattern{n, m}, nil
}

// Fits returns an error unless every pruned matrix of a model with config
// c splits into whole groups of M input columns: N:M keeps N of every M
// consecutive columns of a row, and a remainder would either stay dense or
// need a rule of its own (1:1000 on 64 columns would prune nothing).
func (p Pattern) Fits(c model.Config) error {
	if !p.IsNM() {
		return nil
	}
	for _, bp := range c.BlockParams() {
		if bp.Linear && bp.Shape[1]%p.M != 0 {
			return fmt.Errorf("pattern %s: %s has %d input columns, not a multiple of %d", p, bp.Suffix, bp.Shape[1], p.M)
		}
	}
	return nil
}

// IsNM reports whether the pattern is N:M.
func (p Pattern) IsNM() bool { return p.M > 0 }

func (p Pattern) String() string {
	if !p.IsNM() {
		return "unstructured"
	}
	return fmt.Sprintf("%d:%d", p.N, p.M)
}

// Sparsity is the fraction of zeros the pattern implies (N:M), or s.
func (p Pattern) Sparsity(s float64) float64 {
	if p.IsNM() {
		return 1 - float64(p.N)/float64(p.M)
	}
	return s
}

// PruneCount is how many of n weights unstructured pruning at sparsity s
// zeroes: round(n·s), so the kept count is exactly n − round(n·s).
func PruneCount(n int, s float64) int {
	c := int(float64(n)*s + 0.5)
	return max(0, min(n, c))
}

// lowest marks in prune the c entries of idx with the smallest score (ties
// broken by position, so masks are deterministic).
func lowest(prune []bool, score []float32, idx []int, c int) {
	sort.Slice(idx, func(a, b int) bool {
		sa, sb := score[idx[a]], score[idx[b]]
		if sa != sb {
			return sa < sb
		}
		return idx[a] < idx[b]
	})
	for _, i := range idx[:c] {
		prune[i] = true
	}
}

// MaskTensor returns which entries of a rows×cols score matrix to prune:
// the PruneCount(rows·cols, s) lowest over the whole tensor, ties broken by
// position (as a stable sort would). It selects in O(n) time without
// copying the scores: τ = the c-th smallest score, then every score < τ and the
// first c − #{< τ} scores equal to τ are pruned.
func MaskTensor(score []float32, rows, cols int, s float64) []bool {
	n := rows * cols
	prune := make([]bool, n)
	c := PruneCount(n, s)
	if c == 0 {
		return prune
	}
	tau := kthSmallest(score[:n], c-1)
	below := 0
	for i, v := range score[:n] {
		if v < tau {
			prune[i] = true
			below++
		}
	}
	for i, v := range score[:n] {
		if below == c {
			break
		}
		if v == tau {
			prune[i] = true
			below++
		}
	}
	return prune
}

// kthSmallest returns the k-th smallest value of x (0-based) without
// reordering it: a radix select on the float's bits mapped to unsigned
// order (sign flipped for positives, all bits inverted for negatives).
// Two counting passes, the top 16 bits then, within their bucket holding
// the k-th, the low 16: sequential reads instead of quickselect's
// data-dependent swaps (which were 4% of a 7B-shaped Elsa-L run), and no
// copy of the scores. −0 and +0 are distinct keys here but compare equal
// as floats, which is all MaskTensor asks of the result.
func kthSmallest(x []float32, k int) float32 {
	key := func(v float32) uint32 {
		b := math.Float32bits(v)
		return b ^ (uint32(int32(b)>>31) | 1<<31)
	}
	var hist [1 << 16]int
	for _, v := range x {
		hist[key(v)>>16]++
	}
	hi, k := bucketOf(&hist, k)
	clear(hist[:])
	for _, v := range x {
		if kv := key(v); kv>>16 == hi {
			hist[kv&0xffff]++
		}
	}
	lo, _ := bucketOf(&hist, k)
	kv := hi<<16 | lo
	// Invert key: a set top bit was a positive float.
	if kv&(1<<31) != 0 {
		return math.Float32frombits(kv &^ (1 << 31))
	}
	return math.Float32frombits(^kv)
}

// bucketOf is the bucket of hist holding the k-th counted item (0-based)
// and that item's rank within it.
func bucketOf(hist *[1 << 16]int, k int) (uint32, int) {
	for b, c := range hist {
		if k < c {
			return uint32(b), k
		}
		k -= c
	}
	panic("admm: kthSmallest: k beyond the values")
}

// MaskRows prunes the lowest scores within every row (Wanda's per-output
// comparison group): the tensor's PruneCount(rows·cols, s) spread over the
// rows as evenly as integers allow (row r prunes ⌊(r+1)·k/rows⌋ − ⌊r·k/rows⌋),
// so the tensor has exactly that many zeros. N:M prunes M−N of every M
// consecutive columns of each row.
func MaskRows(score []float32, rows, cols int, s float64, p Pattern) []bool {
	prune := make([]bool, rows*cols)
	idx := make([]int, 0, cols)
	total := PruneCount(rows*cols, s)
	for r := 0; r < rows; r++ {
		if p.IsNM() {
			for g := 0; g+p.M <= cols; g += p.M {
				idx = idx[:0]
				for j := g; j < g+p.M; j++ {
					idx = append(idx, r*cols+j)
				}
				lowest(prune, score, idx, p.M-p.N)
			}
			continue
		}
		idx = idx[:0]
		for j := 0; j < cols; j++ {
			idx = append(idx, r*cols+j)
		}
		lowest(prune, score, idx, (r+1)*total/rows-r*total/rows)
	}
	return prune
}

// Apply zeroes w where prune is set.
func Apply(w []float32, prune []bool) {
	for i, p := range prune {
		if p {
			w[i] = 0
		}
	}
}
