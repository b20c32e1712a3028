package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// addedVocab splits added tokens out of text, leftmost-longest, as the
// tokenizers library does before normalizing: tokens with normalized=false
// in the raw text, those with normalized=true in the normalized text.
type addedVocab struct {
	raw, normed *trie
	byContent   map[string]hfAdded
}

type section struct {
	text string
	id   int // the added token's id, or -1 for text between them
}

type trie struct {
	next map[byte]*trie
	tok  string // an added token ends here
	end  bool
}

func (t *trie) insert(s string) {
	n := t
	for i := 0; i < len(s); i++ {
		if n.next == nil {
			n.next = map[byte]*trie{}
		}
		c, ok := n.next[s[i]]
		if !ok {
			c = &trie{}
			n.next[s[i]] = c
		}
		n = c
	}
	n.tok, n.end = s, true
}

// longest is the longest token that starts s ("" when none).
func (t *trie) longest(s string) string {
	best := ""
	n := t
	for i := 0; i < len(s) && n != nil; i++ {
		n = n.next[s[i]]
		if n != nil && n.end {
			best = n.tok
		}
	}
	return best
}

func newAddedVocab(tokens []hfAdded, normalize func(string) string) addedVocab {
	v := addedVocab{raw: &trie{}, normed: &trie{}, byContent: map[string]hfAdded{}}
	for _, a := range tokens {
		if a.Content == "" {
			continue
		}
		v.byContent[a.Content] = a
		if a.Normalized && normalize != nil {
			n := normalize(a.Content)
			v.byContent[n] = a
			v.normed.insert(n)
		} else {
			v.raw.insert(a.Content)
		}
	}
	return v
}

// split cuts s into added tokens and the text between them (normalized:
// match the tokens that are matched after normalization). A token with
// lstrip (rstrip) takes the whitespace before (after) it; single_word
// tokens match only between word boundaries.
func (v addedVocab) split(s string, normalized bool) []section {
	t := v.raw
	if normalized {
		t = v.normed
	}
	if t.next == nil {
		return []section{{s, -1}}
	}
	var out []section
	start := 0
	for i := 0; i < len(s); {
		tok := t.longest(s[i:])
		if tok == "" || !v.wordOK(s, i, tok) {
			_, w := utf8.DecodeRuneInString(s[i:])
			i += w
			continue
		}
		if i > start {
			out = append(out, section{s[start:i], -1})
		}
		out = append(out, section{tok, v.byContent[tok].ID})
		i += len(tok)
		start = i
	}
	if start < len(s) {
		out = append(out, section{s[start:], -1})
	}
	for k, sec := range out { // lstrip / rstrip eat the neighbours' whitespace
		if sec.id < 0 {
			continue
		}
		a := v.byContent[sec.text]
		if a.LStrip && k > 0 && out[k-1].id < 0 {
			out[k-1].text = strings.TrimRight(out[k-1].text, unicodeSpace)
		}
		if a.RStrip && k+1 < len(out) && out[k+1].id < 0 {
			out[k+1].text = strings.TrimLeft(out[k+1].text, unicodeSpace)
		}
	}
	kept := out[:0]
	for _, sec := range out {
		if sec.id >= 0 || sec.text != "" {
			kept = append(kept, sec)
		}
	}
	return kept
}

var wordChar = regexp.MustCompile(`^[\p{L}\p{N}_]`)

// wordOK: a single_word token must not touch word characters on either side.
func (v addedVocab) wordOK(s string, i int, tok string) bool {
	if !v.byContent[tok].SingleWord {
		return true
	}
	if i > 0 {
		r, _ := utf8.DecodeLastRuneInString(s[:i])
		if wordChar.MatchString(string(r)) {
			return false
		}
	}
	return !wordChar.MatchString(s[i+len(tok):])
}

// decoder turns tokens back into text pieces.
type decoder func(tokens []string) []string

func (t *HF) setDecoder(d *hfComponent) error {
	if d == nil {
		return nil
	}
	switch d.Type {
	case "Sequence":
		for _, c := range d.Decoders {
			if err := t.setDecoder(c); err != nil {
				return err
			}
		}
	case "ByteLevel":
		t.decoders = append(t.decoders, t.byteLevelDecode)
	case "Metaspace":
		rep := d.Replacement
		if rep == "" {
			rep = spSpace
		}
		strip := d.PrependScheme != "never" && (d.AddPrefix == nil || *d.AddPrefix)
		t.decoders = append(t.decoders, func(toks []string) []string {
			out := make([]string, len(toks))
			for i, s := range toks {
				s = strings.ReplaceAll(s, rep, " ")
				if i == 0 && strip {
					s = strings.TrimPrefix(s, " ")
				}
				out[i] = s
			}
			return out
		})
	case "Replace":
		if d.Pattern.String == nil {
			return fmt.Errorf("decoder Replace: only a String pattern is supported")
		}
		old, content := *d.Pattern.String, d.Content
		t.decoders = append(t.decoders, func(toks []string) []string {
			out := make([]string, len(toks))
			for i, s := range toks {
				out[i] = strings.ReplaceAll(s, old, content)
			}
			return out
		})
	case "ByteFallback":
		t.decoders = append(t.decoders, byteFallbackDecode)
	case "Fuse":
		t.decoders = append(t.decoders, func(toks []string) []string { return []string{strings.Join(toks, "")} })
	case "Strip":
		content, start, stop := d.Content, d.Start, d.Stop
		t.decoders = append(t.decoders, func(toks []string) []string {
			out := make([]string, len(toks))
			for i, s := range toks {
				for k := 0; k < start && strings.HasPrefix(s, content); k++ {
					s = s[len(content):]
				}
				for k := 0; k < stop && strings.HasSuffix(s, content); k++ {
					s = s[:len(s)-len(content)]
				}
				out[i] = s
			}
			return out
		})
	default:
		return fmt.Errorf("decoder %q is not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)", d.Type)
	}
	return nil
}

// byteLevelDecode maps runs of byte-level tokens back to bytes and reads
// them as UTF-8 (invalid sequences become U+FFFD); added tokens pass as
// they are.
func (t *HF) byteLevelDecode(toks []string) []string {
	var out []string
	var run []byte
	flush := func() {
		if len(run) > 0 {
			out = append(out, strings.ToValidUTF8(string(run), "\uFFFD"))
			run = run[:0]
		}
	}
	for _, tok := range toks {
		if _, added := t.added.byContent[tok]; added {
			flush()
			out = append(out, tok)
			continue
		}
		for _, r := range tok {
			if b, ok := charBytes[r]; ok {
				run = append(run, b)
			} else {
				run = append(run, string(r)...)
			}
		}
	}
	flush()
	return out
}

// byteFallbackDecode turns runs of <0xHH> tokens into the text their bytes
// spell (one U+FFFD per byte when they are not valid UTF-8).
func byteFallbackDecode(toks []string) []string {
	var out []string
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, tok := range toks {
		var b byte
		if len(tok) == 6 && strings.HasPrefix(tok, "<0x") && tok[5] == '>' {
			if _, err := fmt.Sscanf(tok[3:5], "%02X", &b); err == nil {
				run = append(run, b)
				continue
			}
		}
		flush()
		out = append(out, tok)
	}
	flush()
	return out
}

// Decode turns ids back into text as the tokenizers library's decode does
// (special tokens kept), with transformers' clean-up of spaces before
// punctuation when tokenizer_config.json asks for it (the default).
func (t *HF) Decode(ids []int) string {
	toks := make([]string, len(ids))
	for i, id := range ids {
		if id >= 0 && id < len(t.pieces) {
			toks[i] = t.pieces[id]
		}
	}
	for _, d := range t.decoders {
		toks = d(toks)
	}
	s := strings.Join(toks, "")
	if t.decoders == nil {
		s = strings.Join(toks, " ")
	}
	if t.cleanUp {
		s = cleanUpSpaces.Replace(s)
	}
	return s
}

// cleanUpSpaces is transformers' clean_up_tokenization.
var cleanUpSpaces = strings.NewReplacer(" .", ".", " ?", "?", " !", "!", " ,", ",", " ' ", "'", " n't", "n't", " 'm", "'m", " 's", "'s", " 've", "'ve", " 're", "'re")
