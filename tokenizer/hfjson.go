package tokenizer

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
	"unicode/utf8"
)

// spSpace is SentencePiece's visible space, "▁" (U+2581).
const spSpace = "\u2581"

// HFJSON renders a llama2.c vocabulary as a Hugging Face tokenizer.json in
// the form transformers' LlamaConverter writes: Prepend("▁") and
// Replace(" ", "▁") normalizers, BPE with byte fallback, merges ranked by
// the score of the merged piece (every split of a piece into two pieces),
// a BOS template post-processor and the matching decoder.
func (t *BPE) HFJSON() ([]byte, error) {
	piece := func(i int) string {
		switch i {
		case 0:
			return "<unk>"
		case 1:
			return "<s>"
		case 2:
			return "</s>"
		}
		if isBytePiece(t.Pieces[i]) {
			return t.Pieces[i]
		}
		return strings.ReplaceAll(t.Pieces[i], " ", spSpace)
	}
	vocab := map[string]int{}
	for i := range t.Pieces {
		if _, dup := vocab[piece(i)]; !dup {
			vocab[piece(i)] = i
		}
	}
	type merge struct {
		a, b  string
		score float32
		id    int
	}
	var merges []merge
	for i := 3; i < len(t.Pieces); i++ {
		p := piece(i)
		if isBytePiece(t.Pieces[i]) {
			continue
		}
		for k := 1; k < len(p); k++ {
			if !utf8.RuneStart(p[k]) {
				continue
			}
			if _, ok := vocab[p[:k]]; !ok {
				continue
			}
			if _, ok := vocab[p[k:]]; ok {
				merges = append(merges, merge{p[:k], p[k:], t.Scores[i], i})
			}
		}
	}
	sort.SliceStable(merges, func(i, j int) bool {
		if merges[i].score != merges[j].score {
			return merges[i].score > merges[j].score
		}
		return merges[i].id < merges[j].id
	})
	ms := make([][2]string, len(merges))
	for i, m := range merges {
		ms[i] = [2]string{m.a, m.b}
	}
	special := func(id int, s string) map[string]any {
		return map[string]any{"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
	}
	doc := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": []any{special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")},
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": spSpace},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": spSpace},
		}},
		"pre_tokenizer": nil,
		"post_processor": map[string]any{
			"type":   "TemplateProcessing",
			"single": []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair": []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}},
				map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 1}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{"<s>": map[string]any{"id": "<s>", "ids": []int{1}, "tokens": []string{"<s>"}}},
		},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": spSpace}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}},
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": "<unk>", "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
			"vocab": vocab, "merges": ms,
		},
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep "<s>" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
