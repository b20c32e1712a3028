package tokenizer

import (
	"bytes"
	"fmt"
	"math"
	"strings"

	sentencepiece "github.com/eliben/go-sentencepiece"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
)

// Field numbers of sentencepiece_model.proto used here.
const (
	spPieces         = 1 // ModelProto.pieces
	spTrainerSpec    = 2 // ModelProto.trainer_spec
	spNormalizerSpec = 3 // ModelProto.normalizer_spec

	pieceText  = 1 // SentencePiece.piece
	pieceScore = 2 // SentencePiece.score
	pieceType  = 3 // SentencePiece.type

	trainerModelType    = 3  // TrainerSpec.model_type (BPE = 2)
	trainerVocabSize    = 4  // TrainerSpec.vocab_size
	trainerByteFallback = 35 // TrainerSpec.byte_fallback
	trainerUnkID        = 40
	trainerBosID        = 41
	trainerEosID        = 42
	trainerPadID        = 43

	normName              = 1 // NormalizerSpec.name
	normAddDummyPrefix    = 3 // default true
	normRemoveExtraSpaces = 4 // default true
	normEscapeWhitespaces = 5 // default true
)

// Piece types of SentencePiece.type.
const (
	typeNormal  = 1
	typeUnknown = 2
	typeControl = 3
	typeUnused  = 5
	typeByte    = 6
)

// SentencePiece is a tokenizer.model (SentencePiece BPE) run by
// github.com/eliben/go-sentencepiece. That library refuses models with
// add_dummy_prefix or remove_extra_whitespaces (LLaMA-2's has the first),
// so we clear both in the proto it reads and apply them ourselves, exactly as
// SentencePiece's normalizer does.
type SentencePiece struct {
	proc              *sentencepiece.Processor
	dummyPrefix       bool
	removeExtraSpaces bool
	bos, vocab        int
}

// LoadSentencePiece reads a tokenizer.model file.
func LoadSentencePiece(path string) (*SentencePiece, error) {
	b, err := fsguard.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseSentencePiece(path, b)
}

// ParseSentencePiece parses tokenizer.model bytes (name is used in errors).
func ParseSentencePiece(name string, b []byte) (*SentencePiece, error) {
	sp := &SentencePiece{dummyPrefix: true, removeExtraSpaces: true, bos: -1}
	var out []byte
	var sawNorm bool
	bosID := int64(1)
	var pieces []string
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 {
			return nil, fmt.Errorf("%s: not a SentencePiece model: %v", name, protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, rest[n:])
		if m < 0 {
			return nil, fmt.Errorf("%s: not a SentencePiece model: %v", name, protowire.ParseError(m))
		}
		field := rest[:n+m]
		value := rest[n : n+m]
		rest = rest[n+m:]
		if typ == protowire.BytesType {
			value, _ = protowire.ConsumeBytes(value)
		}
		switch {
		case num == spPieces && typ == protowire.BytesType:
			p, err := pieceOf(value)
			if err != nil {
				return nil, fmt.Errorf("%s: piece %d: %v", name, len(pieces), err)
			}
			pieces = append(pieces, p)
		case num == spTrainerSpec && typ == protowire.BytesType:
			if v, ok := varintField(value, trainerBosID); ok {
				bosID = int64(int32(v))
			}
		case num == spNormalizerSpec && typ == protowire.BytesType:
			sawNorm = true
			if v, ok := varintField(value, normAddDummyPrefix); ok {
				sp.dummyPrefix = v != 0
			}
			if v, ok := varintField(value, normRemoveExtraSpaces); ok {
				sp.removeExtraSpaces = v != 0
			}
			field = protowire.AppendTag(nil, spNormalizerSpec, protowire.BytesType)
			field = protowire.AppendBytes(field, clearNormalizerFlags(value))
		}
		out = append(out, field...)
	}
	if !sawNorm {
		out = protowire.AppendTag(out, spNormalizerSpec, protowire.BytesType)
		out = protowire.AppendBytes(out, clearNormalizerFlags(nil))
	}
	if len(pieces) == 0 {
		return nil, fmt.Errorf("%s: not a SentencePiece model: %d bytes and no vocabulary pieces (an empty or damaged file?)", name, len(b))
	}
	out = appendMergeBufferGuard(out, pieces)
	proc, err := sentencepiece.NewProcessor(bytes.NewReader(out))
	if err != nil {
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	sp.proc, sp.vocab = proc, len(pieces)
	if bosID >= 0 && bosID < int64(len(pieces)) {
		sp.bos = int(bosID)
	}
	return sp, nil
}

// appendMergeBufferGuard works around a go-sentencepiece v0.6.0 bug: its
// merge buffer holds the longest piece, and concatenating two adjacent
// symbols longer than that panics (slice bounds out of range); small
// vocabularies such as stories260K's hit it. An UNUSED piece of 0xFF bytes,
// twice the longest piece plus margin, enlarges the buffer. It can never be
// produced: BPE only forms pieces through merges of pieces, and no piece
// holds 0xFF. Its id is past VocabSize.
func appendMergeBufferGuard(out []byte, pieces []string) []byte {
	longest := 4 // a single UTF-8 symbol
	for _, p := range pieces {
		longest = max(longest, len(p))
	}
	var msg []byte
	msg = protowire.AppendTag(msg, pieceText, protowire.BytesType)
	msg = protowire.AppendString(msg, strings.Repeat("\xff", 2*longest+8))
	msg = protowire.AppendTag(msg, pieceType, protowire.VarintType)
	msg = protowire.AppendVarint(msg, typeUnused)
	out = protowire.AppendTag(out, spPieces, protowire.BytesType)
	return protowire.AppendBytes(out, msg)
}

func pieceOf(msg []byte) (string, error) {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return "", protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		if m < 0 {
			return "", protowire.ParseError(m)
		}
		if num == pieceText && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(msg[n:])
			return string(v), nil
		}
		msg = msg[n+m:]
	}
	return "", fmt.Errorf("no piece text")
}

// varintField returns the last value of varint field num in msg.
func varintField(msg []byte, num protowire.Number) (uint64, bool) {
	var v uint64
	found := false
	for len(msg) > 0 {
		fn, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return 0, false
		}
		m := protowire.ConsumeFieldValue(fn, typ, msg[n:])
		if m < 0 {
			return 0, false
		}
		if fn == num && typ == protowire.VarintType {
			v, _ = protowire.ConsumeVarint(msg[n:])
			found = true
		}
		msg = msg[n+m:]
	}
	return v, found
}

// clearNormalizerFlags copies a NormalizerSpec with add_dummy_prefix and
// remove_extra_whitespaces explicitly false.
func clearNormalizerFlags(msg []byte) []byte {
	var out []byte
	for len(msg) > 0 {
		fn, typ, n := protowire.ConsumeTag(msg)
		m := protowire.ConsumeFieldValue(fn, typ, msg[n:])
		if n < 0 || m < 0 {
			break
		}
		if fn != normAddDummyPrefix && fn != normRemoveExtraSpaces {
			out = append(out, msg[:n+m]...)
		}
		msg = msg[n+m:]
	}
	for _, f := range []protowire.Number{normAddDummyPrefix, normRemoveExtraSpaces} {
		out = protowire.AppendTag(out, f, protowire.VarintType)
		out = protowire.AppendVarint(out, 0)
	}
	return out
}

// BOS is the trainer's bos_id (default 1).
func (s *SentencePiece) BOS() int { return s.bos }

// Specials: LLaMA's SentencePiece tokenizer prepends BOS (when it has one).
func (s *SentencePiece) Specials() (prefix, suffix []int) {
	if s.bos < 0 {
		return nil, nil
	}
	return []int{s.bos}, nil
}

// VocabSize is the number of pieces.
func (s *SentencePiece) VocabSize() int { return s.vocab }

// Encode normalizes as SentencePiece does (optionally collapse runs of
// spaces and trim, then the dummy-prefix space) and encodes.
func (s *SentencePiece) Encode(text string) []int {
	if s.removeExtraSpaces {
		text = strings.Join(strings.FieldsFunc(text, func(r rune) bool { return r == ' ' }), " ")
	}
	if text == "" {
		return nil
	}
	if s.dummyPrefix {
		text = " " + text
	}
	toks := s.proc.Encode(text)
	ids := make([]int, len(toks))
	for i, t := range toks {
		ids[i] = t.ID
	}
	return ids
}

// SentencePieceModel renders a llama2.c vocabulary as a SentencePiece BPE
// tokenizer.model (what Hugging Face's LlamaTokenizer reads): ids 0, 1, 2
// become <unk>, <s>, </s>, byte pieces <0xHH> become BYTE pieces, spaces in
// pieces become "▁", and the normalizer adds the dummy prefix without
// collapsing spaces, as LLaMA-2's tokenizer.model does.
func (t *BPE) SentencePieceModel() []byte {
	var out []byte
	for i, p := range t.Pieces {
		typ := uint64(typeNormal)
		switch {
		case i == 0:
			p, typ = "<unk>", typeUnknown
		case i == 1:
			p, typ = "<s>", typeControl
		case i == 2:
			p, typ = "</s>", typeControl
		case isBytePiece(p):
			typ = typeByte
		default:
			p = strings.ReplaceAll(p, " ", "▁")
		}
		var msg []byte
		msg = protowire.AppendTag(msg, pieceText, protowire.BytesType)
		msg = protowire.AppendString(msg, p)
		msg = protowire.AppendTag(msg, pieceScore, protowire.Fixed32Type)
		msg = protowire.AppendFixed32(msg, math.Float32bits(t.Scores[i]))
		msg = protowire.AppendTag(msg, pieceType, protowire.VarintType)
		msg = protowire.AppendVarint(msg, typ)
		out = protowire.AppendTag(out, spPieces, protowire.BytesType)
		out = protowire.AppendBytes(out, msg)
	}
	var trainer []byte
	for _, f := range []struct {
		num protowire.Number
		v   int64
	}{{trainerModelType, 2}, {trainerVocabSize, int64(len(t.Pieces))}, {trainerByteFallback, 1},
		{trainerUnkID, 0}, {trainerBosID, 1}, {trainerEosID, 2}, {trainerPadID, -1}} {
		trainer = protowire.AppendTag(trainer, f.num, protowire.VarintType)
		trainer = protowire.AppendVarint(trainer, uint64(f.v))
	}
	out = protowire.AppendTag(out, spTrainerSpec, protowire.BytesType)
	out = protowire.AppendBytes(out, trainer)
	var norm []byte
	norm = protowire.AppendTag(norm, normName, protowire.BytesType)
	norm = protowire.AppendString(norm, "identity")
	for _, f := range []struct {
		num protowire.Number
		v   uint64
	}{{normAddDummyPrefix, 1}, {normRemoveExtraSpaces, 0}, {normEscapeWhitespaces, 1}} {
		norm = protowire.AppendTag(norm, f.num, protowire.VarintType)
		norm = protowire.AppendVarint(norm, f.v)
	}
	out = protowire.AppendTag(out, spNormalizerSpec, protowire.BytesType)
	return protowire.AppendBytes(out, norm)
}

func isBytePiece(p string) bool {
	var b byte
	n, _ := fmt.Sscanf(p, "<0x%02X>", &b)
	return n == 1 && len(p) == 6
}
