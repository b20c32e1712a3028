package tokenizer

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// preTokenizer splits words into smaller words (first: the word comes from
// the first section of the text, before any added token).
type preTokenizer interface {
	apply(words []string, first bool) []string
}

// unicodeSpace is Unicode's White_Space set: what \s means to Oniguruma,
// the regex engine Hugging Face tokenizers compiles patterns with (RE2's
// \s is ASCII only).
const unicodeSpace = "\t\n\v\f\r \u0085\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

// spaceClass is unicodeSpace as the members of an RE2 character class.
const spaceClass = `\t\n\v\f\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}`

func isSpace(r rune) bool { return strings.ContainsRune(unicodeSpace, r) }

// splitRegex is a Split pattern compiled for RE2. RE2 has no lookaround;
// the one real tokenizers use, the alternative \s+(?!\S) ("a run of
// whitespace not followed by a non-space"), is compiled as a capture group
// (\s+) and, as tiktoken does, a match of it that a non-space follows
// gives its last character back: that is exactly what backtracking into
// the lookahead yields (a run of k ≥ 2 spaces before a letter matches k−1;
// a single space falls through to the next alternative, \s+, which matches
// it alone).
type splitRegex struct {
	re        *regexp.Regexp
	lookahead bool // group 1 is the \s+(?!\S) alternative
}

// compileSplitRegex translates an Oniguruma pattern to RE2: \s, \S, \d, \D,
// \w, \W with Unicode meanings, capture groups made non-capturing, and
// \s+(?!\S) as described above. Other lookarounds, backreferences and
// possessive or atomic forms are refused.
func compileSplitRegex(pat string) (*splitRegex, error) {
	const la = `\s+(?!\S)`
	n := strings.Count(pat, la)
	if n > 1 {
		return nil, fmt.Errorf("regex %q: \\s+(?!\\S) more than once is not supported", pat)
	}
	var b strings.Builder
	inClass := false
	for i := 0; i < len(pat); i++ {
		c := pat[i]
		switch {
		case strings.HasPrefix(pat[i:], la) && !inClass:
			b.WriteString(`([` + spaceClass + `]+)`)
			i += len(la) - 1
		case c == '\\' && i+1 < len(pat):
			e := pat[i+1]
			i++
			switch {
			case e == 's' && inClass:
				b.WriteString(spaceClass)
			case e == 's':
				b.WriteString(`[` + spaceClass + `]`)
			case e == 'S' && !inClass:
				b.WriteString(`[^` + spaceClass + `]`)
			case e == 'd':
				b.WriteString(`\p{Nd}`)
			case e == 'D' && !inClass:
				b.WriteString(`\P{Nd}`)
			case e == 'w' && inClass:
				b.WriteString(`\p{L}\p{M}\p{Nd}\p{Pc}`)
			case e == 'w':
				b.WriteString(`[\p{L}\p{M}\p{Nd}\p{Pc}]`)
			case e == 'W' && !inClass:
				b.WriteString(`[^\p{L}\p{M}\p{Nd}\p{Pc}]`)
			case e == 'S' || e == 'D' || e == 'W':
				return nil, fmt.Errorf("regex %q: \\%c inside a character class is not supported", pat, e)
			case e >= '1' && e <= '9':
				return nil, fmt.Errorf("regex %q: backreferences are not supported", pat)
			default:
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		case c == '[' && !inClass:
			inClass = true
			b.WriteByte(c)
			if i+1 < len(pat) && pat[i+1] == '^' {
				b.WriteByte('^')
				i++
			}
			if i+1 < len(pat) && pat[i+1] == ']' { // a literal ] first in the class
				b.WriteString(`\]`)
				i++
			}
		case c == ']' && inClass:
			inClass = false
			b.WriteByte(c)
		case c == '(' && !inClass:
			if strings.HasPrefix(pat[i:], "(?=") || strings.HasPrefix(pat[i:], "(?!") || strings.HasPrefix(pat[i:], "(?<") || strings.HasPrefix(pat[i:], "(?>") {
				return nil, fmt.Errorf("regex %q: lookaround and atomic groups are not supported (only \\s+(?!\\S))", pat)
			}
			if strings.HasPrefix(pat[i:], "(?") {
				b.WriteByte(c)
			} else {
				b.WriteString("(?:")
			}
		default:
			b.WriteByte(c)
		}
	}
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("regex %q: %v", pat, err)
	}
	return &splitRegex{re: re, lookahead: n == 1}, nil
}

// matches returns the [start, end) spans of the pattern's matches in s,
// left to right, none empty.
func (r *splitRegex) matches(s string) [][2]int {
	var out [][2]int
	for pos := 0; pos < len(s); {
		loc := r.re.FindStringSubmatchIndex(s[pos:])
		if loc == nil {
			break
		}
		start, end := pos+loc[0], pos+loc[1]
		if r.lookahead && len(loc) > 3 && loc[2] >= 0 && end < len(s) {
			if next, _ := utf8.DecodeRuneInString(s[end:]); !isSpace(next) {
				if _, last := utf8.DecodeLastRuneInString(s[start:end]); end-last > start {
					end -= last // give the last space back to what follows
				}
			}
		}
		if end == start { // an empty match: step over one character
			_, w := utf8.DecodeRuneInString(s[start:])
			pos = start + max(w, 1)
			continue
		}
		out = append(out, [2]int{start, end})
		pos = end
	}
	return out
}

// splitter is the Split pre-tokenizer: the pattern's matches and the text
// between them, arranged by behavior.
type splitter struct {
	re       *splitRegex
	behavior string
	invert   bool
}

func (s *splitter) apply(words []string, _ bool) []string {
	var out []string
	for _, w := range words {
		out = append(out, s.split(w)...)
	}
	return out
}

func (s *splitter) split(w string) []string {
	ms := s.re.matches(w)
	if s.invert { // the matches are the words, the rest goes
		var out []string
		for _, m := range ms {
			out = append(out, w[m[0]:m[1]])
		}
		return out
	}
	// Pieces in order, each marked as a match or not.
	type piece struct {
		s     string
		match bool
	}
	var ps []piece
	prev := 0
	for _, m := range ms {
		if m[0] > prev {
			ps = append(ps, piece{w[prev:m[0]], false})
		}
		ps = append(ps, piece{w[m[0]:m[1]], true})
		prev = m[1]
	}
	if prev < len(w) {
		ps = append(ps, piece{w[prev:], false})
	}
	var out []string
	switch s.behavior {
	case "Isolated":
		for _, p := range ps {
			out = append(out, p.s)
		}
	case "Removed":
		for _, p := range ps {
			if !p.match {
				out = append(out, p.s)
			}
		}
	case "MergedWithPrevious": // a match ends the piece before it
		for _, p := range ps {
			if p.match && len(out) > 0 {
				out[len(out)-1] += p.s
				continue
			}
			out = append(out, p.s)
		}
	case "MergedWithNext": // a match starts the piece after it
		carry := ""
		for _, p := range ps {
			if p.match {
				if carry != "" {
					out = append(out, carry)
				}
				carry = p.s
				continue
			}
			out = append(out, carry+p.s)
			carry = ""
		}
		if carry != "" {
			out = append(out, carry)
		}
	case "Contiguous": // runs of matches become one piece
		for i, p := range ps {
			if p.match && i > 0 && ps[i-1].match {
				out[len(out)-1] += p.s
				continue
			}
			out = append(out, p.s)
		}
	}
	return out
}

// metaspace is the Metaspace pre-tokenizer: spaces become the replacement
// ("▁"), which is prepended unless the text starts with it (always; or
// only in the first section, "first"; or never), and with split the text
// is cut before each replacement.
type metaspace struct {
	replacement, scheme string
	split               bool
}

func (m *metaspace) apply(words []string, first bool) []string {
	var out []string
	for _, w := range words {
		w = strings.ReplaceAll(w, " ", m.replacement)
		if !strings.HasPrefix(w, m.replacement) && (m.scheme == "always" || m.scheme == "first" && first) {
			w = m.replacement + w
		}
		if !m.split {
			out = append(out, w)
			continue
		}
		for { // cut before every replacement but a leading one
			k := strings.Index(w[min(len(w), 1):], m.replacement)
			if k < 0 {
				out = append(out, w)
				break
			}
			k++
			out = append(out, w[:k])
			w = w[k:]
		}
	}
	return out
}

// byteLevel is the ByteLevel pre-tokenizer: optionally a space prepended,
// optionally GPT-2's split, then every byte of every word mapped to its
// printable character in GPT-2's byte alphabet.
type byteLevel struct {
	addPrefix bool
	split     *splitRegex
}

// gpt2Split is the ByteLevel pre-tokenizer's own pattern.
var gpt2Split = func() *splitRegex {
	r, err := compileSplitRegex(`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`)
	if err != nil {
		panic(err)
	}
	return r
}()

func (b *byteLevel) apply(words []string, _ bool) []string {
	var out []string
	for _, w := range words {
		if b.addPrefix && !strings.HasPrefix(w, " ") {
			w = " " + w
		}
		pieces := []string{w}
		if b.split != nil {
			pieces = pieces[:0]
			for _, m := range b.split.matches(w) {
				pieces = append(pieces, w[m[0]:m[1]])
			}
		}
		for _, p := range pieces {
			out = append(out, toByteLevel(p))
		}
	}
	return out
}

// byteChars maps a byte to GPT-2's character for it: printable Latin-1
// bytes map to themselves, the other 68 to U+0100 onwards in byte order.
var byteChars, charBytes = func() ([256]string, map[rune]byte) {
	var m [256]string
	inv := map[rune]byte{}
	n := 0
	for b := 0; b < 256; b++ {
		r := rune(b)
		if !(b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF) {
			r = rune(256 + n)
			n++
		}
		m[b] = string(r)
		inv[r] = byte(b)
	}
	return m, inv
}()

func toByteLevel(s string) string {
	var b strings.Builder
	b.Grow(2 * len(s))
	for i := 0; i < len(s); i++ {
		b.WriteString(byteChars[s[i]])
	}
	return b.String()
}
