package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// spSpace is SentencePiece's visible space, "▁" (U+2581).
const spSpace = "\u2581"

// HFBPE is a Hugging Face tokenizer.json with a SentencePiece-style BPE model
// (LLaMA-2, Mistral, TinyLlama): a normalizer of Prepend("▁") and
// Replace(" ", "▁") (or a Metaspace pre-tokenizer), ranked merges, and byte
// fallback. Encoding follows the tokenizers library: each character becomes
// its piece (or its UTF-8 bytes as <0xHH> pieces, or <unk>), then the
// adjacent pair with the lowest merge rank merges, leftmost first.
//
// ByteLevel models (GPT-2 style: Llama-3, Qwen2) are refused with a clear
// error; use --format tokens for them.
type HFBPE struct {
	vocab        map[string]int
	pieces       []string // id -> piece
	size         int
	merges       map[[2]int]int // (left, right) -> rank
	byteFallback [256]int
	unk          int
	bos          int
	prepend      string // normalizer Prepend content ("" if none)
	replaceSpace string // what " " becomes ("" if unchanged)
	splitOnSpace bool   // Metaspace pre-tokenizer with split
}

type hfFile struct {
	AddedTokens []struct {
		ID      int    `json:"id"`
		Content string `json:"content"`
	} `json:"added_tokens"`
	Normalizer   *hfComponent `json:"normalizer"`
	PreTokenizer *hfComponent `json:"pre_tokenizer"`
	Model        struct {
		Type         string            `json:"type"`
		UnkToken     *string           `json:"unk_token"`
		ByteFallback bool              `json:"byte_fallback"`
		Vocab        map[string]int    `json:"vocab"`
		Merges       []json.RawMessage `json:"merges"`
	} `json:"model"`
}

type hfComponent struct {
	Type          string         `json:"type"`
	Normalizers   []*hfComponent `json:"normalizers"`
	PreTokenizers []*hfComponent `json:"pretokenizers"`
	Prepend       string         `json:"prepend"`
	Pattern       struct {
		String *string `json:"String"`
	} `json:"pattern"`
	Content       string `json:"content"`
	Replacement   string `json:"replacement"`
	PrependScheme string `json:"prepend_scheme"`
	AddPrefix     *bool  `json:"add_prefix_space"`
	Split         *bool  `json:"split"`
}

// LoadHFJSON reads a tokenizer.json.
func LoadHFJSON(path string) (*HFBPE, error) {
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseHFJSON(path, b)
}

// ParseHFJSON parses tokenizer.json bytes (name is used in errors).
func ParseHFJSON(name string, b []byte) (*HFBPE, error) {
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: not a tokenizer.json: %v", name, err)
	}
	if f.Model.Type != "BPE" {
		return nil, fmt.Errorf("%s: model type %q is not supported (want BPE)", name, f.Model.Type)
	}
	t := &HFBPE{vocab: f.Model.Vocab, merges: map[[2]int]int{}, unk: -1, bos: -1}
	for _, id := range t.vocab {
		t.size = max(t.size, id+1)
	}
	for _, a := range f.AddedTokens {
		t.vocab[a.Content] = a.ID
		t.size = max(t.size, a.ID+1)
		if t.bos < 0 && (a.Content == "<s>" || a.Content == "<|begin_of_text|>" || a.Content == "<bos>") {
			t.bos = a.ID
		}
	}
	t.pieces = make([]string, t.size)
	for p, id := range t.vocab {
		if id < 0 {
			return nil, fmt.Errorf("%s: piece %q has negative id %d", name, p, id)
		}
		t.pieces[id] = p
	}
	if err := t.setNormalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if err := t.setPreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if f.Model.UnkToken != nil {
		if id, ok := t.vocab[*f.Model.UnkToken]; ok {
			t.unk = id
		}
	}
	for c := range t.byteFallback {
		t.byteFallback[c] = -1
		if id, ok := t.vocab[fmt.Sprintf("<0x%02X>", c)]; ok && f.Model.ByteFallback {
			t.byteFallback[c] = id
		}
	}
	for rank, raw := range f.Model.Merges {
		var pair []string
		var s string
		if err := json.Unmarshal(raw, &s); err == nil {
			pair = strings.SplitN(s, " ", 2)
		} else if err := json.Unmarshal(raw, &pair); err != nil {
			return nil, fmt.Errorf("%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", name, rank)
		}
		if len(pair) != 2 {
			return nil, fmt.Errorf("%s: merge %d has %d parts", name, rank, len(pair))
		}
		l, lok := t.vocab[pair[0]]
		r, rok := t.vocab[pair[1]]
		if _, mok := t.vocab[pair[0]+pair[1]]; !lok || !rok || !mok {
			return nil, fmt.Errorf("%s: merge %d (%q %q) names pieces outside the vocabulary", name, rank, pair[0], pair[1])
		}
		if _, dup := t.merges[[2]int{l, r}]; !dup {
			t.merges[[2]int{l, r}] = rank
		}
	}
	return t, nil
}

func (t *HFBPE) setNormalizer(n *hfComponent) error {
	if n == nil {
		return nil
	}
	switch n.Type {
	case "Sequence":
		for _, c := range n.Normalizers {
			if err := t.setNormalizer(c); err != nil {
				return err
			}
		}
	case "Prepend":
		t.prepend = n.Prepend
	case "Replace":
		if n.Pattern.String == nil || *n.Pattern.String != " " {
			return fmt.Errorf("normalizer Replace: only the pattern {\"String\": \" \"} is supported")
		}
		t.replaceSpace = n.Content
	default:
		return fmt.Errorf("normalizer %q is not supported (supported: Sequence, Prepend, Replace)", n.Type)
	}
	return nil
}

func (t *HFBPE) setPreTokenizer(p *hfComponent) error {
	if p == nil {
		return nil
	}
	switch p.Type {
	case "Sequence":
		for _, c := range p.PreTokenizers {
			if err := t.setPreTokenizer(c); err != nil {
				return err
			}
		}
	case "Metaspace":
		t.replaceSpace = p.Replacement
		if p.PrependScheme != "never" && (p.AddPrefix == nil || *p.AddPrefix) {
			t.prepend = p.Replacement
		}
		t.splitOnSpace = p.Split == nil || *p.Split
	case "ByteLevel", "Split":
		return fmt.Errorf("pre-tokenizer %q (GPT-2 style byte-level BPE, as in Llama-3 and Qwen2) is not supported yet; tokenize elsewhere and use the tokens data format", p.Type)
	default:
		return fmt.Errorf("pre-tokenizer %q is not supported (supported: Metaspace)", p.Type)
	}
	return nil
}

// BOS is the id of <s> (or <|begin_of_text|>, <bos>), -1 if none.
func (t *HFBPE) BOS() int { return t.bos }

// VocabSize is one past the largest id.
func (t *HFBPE) VocabSize() int { return t.size }

// Encode normalizes, pre-tokenizes and applies the ranked merges.
func (t *HFBPE) Encode(text string) []int {
	if text == "" {
		return nil
	}
	if t.replaceSpace != "" {
		text = strings.ReplaceAll(text, " ", t.replaceSpace)
	}
	text = t.prepend + text
	var out []int
	for _, word := range t.words(text) {
		var ids []int
		for _, r := range word {
			ch := string(r)
			if r == utf8.RuneError {
				ch = ""
			}
			if id, ok := t.vocab[ch]; ok && ch != "" {
				ids = append(ids, id)
				continue
			}
			fell := true
			for _, b := range []byte(string(r)) {
				fell = fell && t.byteFallback[b] >= 0
			}
			switch {
			case fell:
				for _, b := range []byte(string(r)) {
					ids = append(ids, t.byteFallback[b])
				}
			case t.unk >= 0 && (len(ids) == 0 || ids[len(ids)-1] != t.unk):
				ids = append(ids, t.unk) // fuse_unk: one <unk> per run
			}
		}
		out = append(out, mergeSymbols(ids, t.rankRule)...)
	}
	return out
}

// words splits before every replacement space when Metaspace splits.
func (t *HFBPE) words(text string) []string {
	if !t.splitOnSpace || t.replaceSpace == "" {
		return []string{text}
	}
	var ws []string
	for len(text) > 0 {
		i := strings.Index(text[1:], t.replaceSpace)
		if i < 0 {
			ws = append(ws, text)
			break
		}
		ws = append(ws, text[:i+1])
		text = text[i+1:]
	}
	return ws
}

func (t *HFBPE) rankRule(l, r int) (int, float64, bool) {
	rank, ok := t.merges[[2]int{l, r}]
	if !ok {
		return 0, 0, false
	}
	return t.mergedID(l, r), -float64(rank), true
}

func (t *HFBPE) mergedID(l, r int) int { return t.vocab[t.pieces[l]+t.pieces[r]] }

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
