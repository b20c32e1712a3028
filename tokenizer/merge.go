package tokenizer

import "container/heap"

// mergeRule says whether the adjacent symbols (left, right) may merge, into
// which id, and with what priority (higher merges first).
type mergeRule func(left, right int) (id int, priority float64, ok bool)

// mergeSymbols applies BPE merges to ids: repeatedly the adjacent pair with
// the highest priority merges, the leftmost on ties. That is llama2.c's and
// SentencePiece's loop (priority = score of the merged piece) and HF
// tokenizers' (priority = −rank of the merge). A heap with lazy
// invalidation keeps it O(n log n); symbol indices keep the left-to-right
// order of the text, so "leftmost" is the smallest index.
func mergeSymbols(ids []int, rule mergeRule) []int {
	type symbol struct {
		id         int
		prev, next int
		alive      bool
	}
	syms := make([]symbol, len(ids))
	for i, id := range ids {
		syms[i] = symbol{id: id, prev: i - 1, next: i + 1, alive: true}
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	h := &candHeap{}
	push := func(l int) {
		if l < 0 {
			return
		}
		r := syms[l].next
		if r < 0 {
			return
		}
		if id, p, ok := rule(syms[l].id, syms[r].id); ok {
			heap.Push(h, candidate{left: l, right: r, id: id, priority: p, lid: syms[l].id, rid: syms[r].id})
		}
	}
	for i := range syms {
		push(i)
	}
	for h.Len() > 0 {
		c := heap.Pop(h).(candidate)
		l, r := &syms[c.left], &syms[c.right]
		// Stale entries: a side merged away or changed since the push.
		if !l.alive || !r.alive || l.next != c.right || l.id != c.lid || r.id != c.rid {
			continue
		}
		l.id = c.id
		r.alive = false
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = c.left
		}
		push(l.prev)
		push(c.left)
	}
	out := ids[:0]
	for i := 0; i >= 0 && i < len(syms); i = syms[i].next {
		out = append(out, syms[i].id)
	}
	return out
}

type candidate struct {
	left, right int // symbol indices
	id          int // merged id
	priority    float64
	lid, rid    int // ids at push time, to detect stale entries
}

type candHeap []candidate

func (h candHeap) Len() int { return len(h) }
func (h candHeap) Less(i, j int) bool {
	if h[i].priority != h[j].priority {
		return h[i].priority > h[j].priority
	}
	return h[i].left < h[j].left
}
func (h candHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)   { *h = append(*h, x.(candidate)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
