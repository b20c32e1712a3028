package tokenizer

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// HF is a Hugging Face tokenizer.json with a BPE model, run as the
// tokenizers library runs it:
//
//  1. added tokens (special or not) are split out of the raw text,
//     leftmost-longest, before anything else (those marked normalized are
//     matched again after normalization), honouring lstrip / rstrip;
//  2. each remaining section is normalized (NFC, NFKC, NFD, NFKD,
//     Lowercase, Prepend, Replace, Strip, Sequence);
//  3. pre-tokenized (Split with the regexes real models use, ByteLevel,
//     Metaspace, Sequence) into words;
//  4. each word is merged by the BPE model: SentencePiece-style (characters,
//     byte fallback <0xHH>, <unk>) or byte-level (GPT-2's byte-to-character
//     alphabet), the lowest-ranked adjacent pair first, leftmost on ties;
//     with ignore_merges (Llama-3) a word already in the vocabulary is one
//     token;
//  5. the post-processor adds the special tokens of a single sequence
//     (TemplateProcessing; ByteLevel adds none).
//
// Encode does 1-4; Specials says what 5 adds, so EncodeSpecial(text) is
// transformers' tokenizer(text) (add_special_tokens=True).
type HF struct {
	vocab        map[string]int
	pieces       []string // id -> piece
	size         int
	merges       map[[2]int]int // (left, right) -> rank
	byteFallback [256]int
	unk          int
	fuseUnk      bool
	ignoreMerges bool
	byteLevel    bool // words are in the byte-level alphabet

	normalizers []func(string) string
	pre         []preTokenizer
	added       addedVocab

	prefix, suffix []int // post-processor, single sequence
	bos            int
	decoders       []decoder
	cleanUp        bool

	cache      sync.Map // word -> []int
	cacheCount atomic.Int64
}

// maxCached bounds the word cache (entries): real text has a Zipfian
// vocabulary, so a few hundred thousand words cover almost every lookup.
const maxCached = 1 << 18

type hfFile struct {
	AddedTokens   []hfAdded    `json:"added_tokens"`
	Normalizer    *hfComponent `json:"normalizer"`
	PreTokenizer  *hfComponent `json:"pre_tokenizer"`
	PostProcessor *hfComponent `json:"post_processor"`
	Decoder       *hfComponent `json:"decoder"`
	Model         struct {
		Type                    string            `json:"type"`
		UnkToken                *string           `json:"unk_token"`
		ByteFallback            bool              `json:"byte_fallback"`
		FuseUnk                 bool              `json:"fuse_unk"`
		IgnoreMerges            bool              `json:"ignore_merges"`
		ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
		EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
		Vocab                   map[string]int    `json:"vocab"`
		Merges                  []json.RawMessage `json:"merges"`
	} `json:"model"`
}

type hfAdded struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

type hfComponent struct {
	Type          string         `json:"type"`
	Normalizers   []*hfComponent `json:"normalizers"`
	PreTokenizers []*hfComponent `json:"pretokenizers"`
	Processors    []*hfComponent `json:"processors"`
	Decoders      []*hfComponent `json:"decoders"`
	Prepend       string         `json:"prepend"`
	Pattern       struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	} `json:"pattern"`
	Content       string `json:"content"`
	Replacement   string `json:"replacement"`
	PrependScheme string `json:"prepend_scheme"`
	AddPrefix     *bool  `json:"add_prefix_space"`
	UseRegex      *bool  `json:"use_regex"`
	Split         *bool  `json:"split"`
	Behavior      string `json:"behavior"`
	Invert        bool   `json:"invert"`
	Left          bool   `json:"left"`
	Right         bool   `json:"right"`
	Start         int    `json:"start"`
	Stop          int    `json:"stop"`
	Single        []struct {
		SpecialToken *struct {
			ID string `json:"id"`
		} `json:"SpecialToken"`
		Sequence *struct {
			ID string `json:"id"`
		} `json:"Sequence"`
	} `json:"single"`
	SpecialTokens map[string]struct {
		IDs []int `json:"ids"`
	} `json:"special_tokens"`
}

// hfConfig is the part of tokenizer_config.json the encoding depends on.
type hfConfig struct {
	BOSToken json.RawMessage `json:"bos_token"`
	EOSToken json.RawMessage `json:"eos_token"`
	AddBOS   *bool           `json:"add_bos_token"`
	AddEOS   *bool           `json:"add_eos_token"`
	Class    string          `json:"tokenizer_class"`
	CleanUp  *bool           `json:"clean_up_tokenization_spaces"`
}

// tokenString reads a tokenizer_config.json token: a string, or an object
// with "content" ("" for null or absent).
func tokenString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var obj struct {
		Content string `json:"content"`
	}
	if json.Unmarshal(raw, &obj) == nil {
		return obj.Content
	}
	return ""
}

// rebuildsTemplate names the transformers tokenizer classes whose
// add_bos_token / add_eos_token rebuild the post-processor's template
// (LlamaTokenizerFast and GemmaTokenizerFast do, in update_post_processor);
// other classes take the template from tokenizer.json as it is.
var rebuildsTemplate = map[string]bool{"LlamaTokenizer": true, "LlamaTokenizerFast": true, "GemmaTokenizer": true,
	"GemmaTokenizerFast": true, "CodeLlamaTokenizer": true, "CodeLlamaTokenizerFast": true}

// LoadHFJSON reads a tokenizer.json, and the tokenizer_config.json beside
// it when there is one.
func LoadHFJSON(path string) (*HF, error) {
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cfg []byte
	if c, err := fsguard.ReadFile(filepath.Join(filepath.Dir(path), HFConfigFile)); err == nil {
		cfg = c
	}
	return ParseHFJSONConfig(path, b, cfg)
}

// ParseHFJSON parses tokenizer.json bytes (name is used in errors).
func ParseHFJSON(name string, b []byte) (*HF, error) { return ParseHFJSONConfig(name, b, nil) }

// ParseHFJSONConfig parses tokenizer.json bytes with the bytes of its
// tokenizer_config.json (nil: none). Every component the file names must be
// supported; an unsupported one is an error that names it and the file.
func ParseHFJSONConfig(name string, b, config []byte) (*HF, error) {
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: not a tokenizer.json: %v", name, err)
	}
	if f.Model.Type != "BPE" {
		return nil, fmt.Errorf("%s: model type %q is not supported (want BPE)", name, f.Model.Type)
	}
	for _, s := range []*string{f.Model.ContinuingSubwordPrefix, f.Model.EndOfWordSuffix} {
		if s != nil && *s != "" {
			return nil, fmt.Errorf("%s: BPE with a continuing_subword_prefix or end_of_word_suffix is not supported", name)
		}
	}
	t := &HF{vocab: f.Model.Vocab, merges: map[[2]int]int{}, unk: -1, bos: -1, fuseUnk: f.Model.FuseUnk,
		ignoreMerges: f.Model.IgnoreMerges, cleanUp: true}
	if t.vocab == nil {
		t.vocab = map[string]int{}
	}
	for _, id := range t.vocab {
		t.size = max(t.size, id+1)
	}
	for _, a := range f.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("%s: added token %q has negative id %d", name, a.Content, a.ID)
		}
		t.vocab[a.Content] = a.ID
		t.size = max(t.size, a.ID+1)
	}
	t.pieces = make([]string, t.size)
	for p, id := range t.vocab {
		if id < 0 {
			return nil, fmt.Errorf("%s: piece %q has negative id %d", name, p, id)
		}
		t.pieces[id] = p
	}
	for _, a := range f.AddedTokens {
		t.pieces[a.ID] = a.Content // an added token's own id wins over a vocabulary duplicate
	}
	if err := t.setNormalizer(f.Normalizer); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if err := t.setPreTokenizer(f.PreTokenizer); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if err := t.setPostProcessor(f.PostProcessor); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	if err := t.setDecoder(f.Decoder); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	t.added = newAddedVocab(f.AddedTokens, t.normalize)
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
	if err := t.applyConfig(config); err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	return t, nil
}

// applyConfig takes the BOS token and the decoding clean-up from
// tokenizer_config.json; without one, BOS is the post-processor's first
// special token, or <s> / <|begin_of_text|> / <bos> when in the vocabulary.
func (t *HF) applyConfig(config []byte) error {
	if len(t.prefix) > 0 {
		t.bos = t.prefix[0]
	}
	if t.bos < 0 {
		for _, s := range []string{"<s>", "<|begin_of_text|>", "<bos>"} {
			if id, ok := t.vocab[s]; ok {
				t.bos = id
				break
			}
		}
	}
	if config == nil {
		return nil
	}
	var c hfConfig
	if err := json.Unmarshal(config, &c); err != nil {
		return fmt.Errorf("%s: %v", HFConfigFile, err)
	}
	if c.CleanUp != nil {
		t.cleanUp = *c.CleanUp
	}
	if len(c.BOSToken) == 0 || string(c.BOSToken) == "null" {
		if len(t.prefix) == 0 {
			t.bos = -1 // the model has none (Qwen)
		}
	}
	if bos := tokenString(c.BOSToken); bos != "" {
		id, ok := t.vocab[bos]
		if !ok {
			return fmt.Errorf("%s: bos_token %q is not in the vocabulary", HFConfigFile, bos)
		}
		t.bos = id
	}
	if rebuildsTemplate[c.Class] && (c.AddBOS != nil || c.AddEOS != nil) {
		t.prefix, t.suffix = nil, nil // transformers' defaults: add BOS, not EOS
		if (c.AddBOS == nil || *c.AddBOS) && t.bos >= 0 {
			t.prefix = []int{t.bos}
		}
		if eos := tokenString(c.EOSToken); c.AddEOS != nil && *c.AddEOS && eos != "" {
			id, ok := t.vocab[eos]
			if !ok {
				return fmt.Errorf("%s: eos_token %q is not in the vocabulary", HFConfigFile, eos)
			}
			t.suffix = []int{id}
		}
	}
	return nil
}

// BOS is the model's beginning-of-sequence id, -1 if it has none.
func (t *HF) BOS() int { return t.bos }

// VocabSize is one past the largest id.
func (t *HF) VocabSize() int { return t.size }

// Specials are the ids the post-processor puts before and after a single
// sequence (tokenizer(text) with add_special_tokens=True).
func (t *HF) Specials() (prefix, suffix []int) { return t.prefix, t.suffix }

// normalize runs the normalizers.
func (t *HF) normalize(s string) string {
	for _, n := range t.normalizers {
		s = n(s)
	}
	return s
}

// Encode returns the ids of text without the post-processor's specials.
func (t *HF) Encode(text string) []int {
	var out []int
	for i, sec := range t.added.split(text, false) {
		if sec.id >= 0 {
			out = append(out, sec.id)
			continue
		}
		s := t.normalize(sec.text)
		if s == "" {
			continue
		}
		for _, sub := range t.added.split(s, true) {
			if sub.id >= 0 {
				out = append(out, sub.id)
				continue
			}
			words := []string{sub.text}
			for _, p := range t.pre {
				words = p.apply(words, i == 0)
			}
			for _, w := range words {
				out = append(out, t.word(w)...)
			}
		}
	}
	return out
}

// EncodeSpecial is tokenizer(text): Encode with the post-processor's
// specials around it.
func (t *HF) EncodeSpecial(text string) []int {
	ids := append(append([]int(nil), t.prefix...), t.Encode(text)...)
	return append(ids, t.suffix...)
}

// word merges one pre-tokenized word (cached).
func (t *HF) word(w string) []int {
	if w == "" {
		return nil
	}
	if v, ok := t.cache.Load(w); ok {
		return v.([]int)
	}
	var ids []int
	if id, ok := t.vocab[w]; ok && t.ignoreMerges {
		ids = []int{id}
	} else {
		ids = mergeSymbols(t.symbols(w), t.rankRule)
	}
	if t.cacheCount.Load() < maxCached {
		t.cacheCount.Add(1)
		t.cache.Store(w, ids)
	}
	return ids
}

// symbols are a word's starting symbols: each character's piece, or its
// bytes as <0xHH> pieces (byte fallback), or <unk> (fused when fuse_unk).
func (t *HF) symbols(w string) []int {
	ids := make([]int, 0, len(w))
	for _, r := range w {
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
		case t.unk >= 0 && (!t.fuseUnk || len(ids) == 0 || ids[len(ids)-1] != t.unk):
			ids = append(ids, t.unk)
		}
	}
	return ids
}

func (t *HF) rankRule(l, r int) (int, float64, bool) {
	rank, ok := t.merges[[2]int{l, r}]
	if !ok {
		return 0, 0, false
	}
	return t.vocab[t.pieces[l]+t.pieces[r]], -float64(rank), true
}

func (t *HF) setNormalizer(n *hfComponent) error {
	if n == nil {
		return nil
	}
	add := func(f func(string) string) { t.normalizers = append(t.normalizers, f) }
	switch n.Type {
	case "Sequence":
		for _, c := range n.Normalizers {
			if err := t.setNormalizer(c); err != nil {
				return err
			}
		}
	case "NFC":
		add(norm.NFC.String)
	case "NFKC":
		add(norm.NFKC.String)
	case "NFD":
		add(norm.NFD.String)
	case "NFKD":
		add(norm.NFKD.String)
	case "Lowercase":
		add(strings.ToLower)
	case "Prepend":
		p := n.Prepend
		add(func(s string) string { // tokenizers prepends to non-empty text only
			if s == "" {
				return s
			}
			return p + s
		})
	case "Strip":
		left, right := n.Left, n.Right
		add(func(s string) string {
			if left {
				s = strings.TrimLeft(s, unicodeSpace)
			}
			if right {
				s = strings.TrimRight(s, unicodeSpace)
			}
			return s
		})
	case "Replace":
		switch {
		case n.Pattern.String != nil:
			old, content := *n.Pattern.String, n.Content
			add(func(s string) string { return strings.ReplaceAll(s, old, content) })
		case n.Pattern.Regex != nil:
			re, err := compileSplitRegex(*n.Pattern.Regex)
			if err != nil {
				return fmt.Errorf("normalizer Replace: %v", err)
			}
			if re.lookahead {
				return fmt.Errorf("normalizer Replace: a lookahead in %q is not supported", *n.Pattern.Regex)
			}
			content := n.Content
			add(func(s string) string { return re.re.ReplaceAllLiteralString(s, content) })
		}
	default:
		return fmt.Errorf("normalizer %q is not supported (supported: Sequence, NFC, NFKC, NFD, NFKD, Lowercase, Prepend, Replace, Strip)", n.Type)
	}
	return nil
}

func (t *HF) setPreTokenizer(p *hfComponent) error {
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
		m := &metaspace{replacement: p.Replacement, scheme: p.PrependScheme, split: p.Split == nil || *p.Split}
		if m.replacement == "" {
			m.replacement = spSpace
		}
		if m.scheme == "" { // the older form: add_prefix_space
			m.scheme = "always"
			if p.AddPrefix != nil && !*p.AddPrefix {
				m.scheme = "never"
			}
		}
		switch m.scheme {
		case "always", "first", "never":
		default:
			return fmt.Errorf("pre-tokenizer Metaspace: prepend_scheme %q (want always, first or never)", m.scheme)
		}
		t.pre = append(t.pre, m)
	case "ByteLevel":
		b := &byteLevel{addPrefix: p.AddPrefix != nil && *p.AddPrefix}
		if p.UseRegex == nil || *p.UseRegex {
			b.split = gpt2Split
		}
		t.byteLevel = true
		t.pre = append(t.pre, b)
	case "Split":
		s := &splitter{behavior: p.Behavior, invert: p.Invert}
		switch {
		case p.Pattern.String != nil:
			s.re = &splitRegex{re: regexp.MustCompile(regexp.QuoteMeta(*p.Pattern.String))}
		case p.Pattern.Regex != nil:
			var err error
			if s.re, err = compileSplitRegex(*p.Pattern.Regex); err != nil {
				return fmt.Errorf("pre-tokenizer Split: %v", err)
			}
		default:
			return fmt.Errorf("pre-tokenizer Split without a pattern")
		}
		switch s.behavior {
		case "Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous":
		default:
			return fmt.Errorf("pre-tokenizer Split: behavior %q is not supported", s.behavior)
		}
		t.pre = append(t.pre, s)
	default:
		return fmt.Errorf("pre-tokenizer %q is not supported (supported: Sequence, Split, ByteLevel, Metaspace)", p.Type)
	}
	return nil
}

func (t *HF) setPostProcessor(p *hfComponent) error {
	if p == nil {
		return nil
	}
	switch p.Type {
	case "Sequence":
		for _, c := range p.Processors {
			if err := t.setPostProcessor(c); err != nil {
				return err
			}
		}
	case "ByteLevel": // offsets only
	case "TemplateProcessing":
		seen := false
		for _, it := range p.Single {
			switch {
			case it.Sequence != nil:
				seen = true
			case it.SpecialToken != nil:
				st, ok := p.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return fmt.Errorf("post-processor TemplateProcessing: special token %q has no ids", it.SpecialToken.ID)
				}
				if seen {
					t.suffix = append(t.suffix, st.IDs...)
				} else {
					t.prefix = append(t.prefix, st.IDs...)
				}
			}
		}
	default:
		return fmt.Errorf("post-processor %q is not supported (supported: TemplateProcessing, ByteLevel, Sequence)", p.Type)
	}
	return nil
}
