package shard

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/elsa-stream/elsa-stream/internal/kernels"
)

// prunedBytes returns n float values of d, a fraction keep of them
// nonzero (one −0 among the zeros: it must survive the round trip).
func prunedBytes(r *rand.Rand, d DType, n int64, keep float64) []byte {
	b := make([]byte, n*d.Size())
	for i := int64(0); i < n; i++ {
		if r.Float64() >= keep {
			continue
		}
		v := float32(r.NormFloat64())
		switch d {
		case F32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		case BF16:
			binary.LittleEndian.PutUint16(b[2*i:], kernels.BF16FromF32(v))
		case F16:
			binary.LittleEndian.PutUint16(b[2*i:], kernels.F16FromF32(v))
		}
	}
	if n > 3 {
		copy(b[3*d.Size():], []byte{0, 0x80, 0, 0x80}[4-d.Size():]) // −0
	}
	return b
}

func packedSpecs() ([]Spec, map[string]float64) {
	return []Spec{
			{"model.embed_tokens.weight", F32, []int64{16, 40}},
			{"model.layers.0.self_attn.q_proj.weight", BF16, []int64{40, 40}},
			{"model.layers.0.mlp.up_proj.weight", F16, []int64{70, 40}},
			{"model.layers.0.mlp.down_proj.weight", F32, []int64{40, 70}},
			{"model.layers.0.self_attn.k_proj.weight", BF16, []int64{2, 4, 33}},
			{"model.layers.0.mlp.gate_proj.weight", BF16, []int64{4, 1000}},
			{"model.layers.0.input_layernorm.weight", F32, []int64{40}},
			{"model.norm.weight", F32, []int64{40}},
		}, map[string]float64{
			"model.embed_tokens.weight": 1, "model.layers.0.self_attn.q_proj.weight": 0.1,
			"model.layers.0.mlp.up_proj.weight": 0.3, "model.layers.0.mlp.down_proj.weight": 0.5,
			"model.layers.0.self_attn.k_proj.weight": 0.2, "model.layers.0.input_layernorm.weight": 1, "model.norm.weight": 1,
			"model.layers.0.mlp.gate_proj.weight": 0.003, // gaps over 255: fillers
		}
}

func writePrunedModel(t *testing.T, dir string) map[string][]byte {
	r := rand.New(rand.NewPCG(3, 4))
	specs, keep := packedSpecs()
	data := map[string][]byte{}
	for _, s := range specs {
		data[s.Name] = prunedBytes(r, s.DType, s.numBytes()/s.DType.Size(), keep[s.Name])
	}
	writeModel(t, dir, specs, 0, data)
	return data
}

// TestPackRoundTrip packs a checkpoint of pruned and dense tensors, reads
// every tensor back through the packed folder (whole, and ranges that cut
// rows), and unpacks it to the very same file.
func TestPackRoundTrip(t *testing.T) {
	tmp := t.TempDir()
	src, packed, back := filepath.Join(tmp, "src"), filepath.Join(tmp, "packed"), filepath.Join(tmp, "back")
	data := writePrunedModel(t, src)
	mf, err := Pack(src, packed, PackOptions{})
	if err != nil {
		t.Fatal(err)
	}
	enc := map[string]string{}
	for _, pt := range mf.Tensors {
		enc[pt.Name] = pt.Encoding
	}
	for name, want := range map[string]string{"model.embed_tokens.weight": EncodingDense, "model.layers.0.self_attn.q_proj.weight": EncodingGaps,
		"model.layers.0.mlp.up_proj.weight": EncodingBitmap, "model.layers.0.mlp.down_proj.weight": EncodingBitmap,
		"model.layers.0.mlp.gate_proj.weight": EncodingGaps, "model.norm.weight": EncodingDense} {
		if enc[name] != want {
			t.Errorf("%s: encoding %q, want %q", name, enc[name], want)
		}
	}
	if mf.PackedBytes >= mf.DenseBytes {
		t.Errorf("packed %d bytes, dense %d", mf.PackedBytes, mf.DenseBytes)
	}
	entries, _ := os.ReadDir(packed)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			t.Errorf("packed folder holds %s, which HF loaders would pick up", e.Name())
		}
	}
	m, err := Open(packed)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := rand.New(rand.NewPCG(5, 6))
	for name, want := range data {
		tn, ok := m.Tensor(name)
		if !ok {
			t.Fatalf("%s missing from the packed folder", name)
		}
		got := make([]byte, tn.NumBytes())
		if err := tn.ReadBytes(got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: read back differs (%v)", name, err)
		}
		size := tn.DType.Size()
		for k := 0; k < 20; k++ {
			lo := r.Int64N(tn.NumElements())
			hi := lo + r.Int64N(tn.NumElements()-lo) + 1
			part := make([]byte, (hi-lo)*size)
			if err := tn.ReadRangeBytes(part, lo*size); err != nil || !bytes.Equal(part, want[lo*size:hi*size]) {
				t.Fatalf("%s: elements [%d, %d) differ (%v)", name, lo, hi, err)
			}
		}
		f32 := make([]float32, tn.NumElements())
		if err := tn.ReadFloat32(f32); err != nil {
			t.Fatal(err)
		}
	}
	if err := Unpack(packed, back, PackOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{SingleFile, ConfigFile} {
		a, _ := os.ReadFile(filepath.Join(src, name))
		b, err := os.ReadFile(filepath.Join(back, name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: unpacked file differs from the source (%v)", name, err)
		}
	}
	if _, err := Pack(packed, filepath.Join(tmp, "again"), PackOptions{}); err == nil || !strings.Contains(err.Error(), "already packed") {
		t.Errorf("packing a packed folder: %v", err)
	}
}

// TestPackedDamageIsAnError damages the index of a packed tensor (a bitmap
// bit flipped, which changes a row's count; a gap set to 0): reading the
// tensor fails naming it, never returns other weights.
func TestPackedDamageIsAnError(t *testing.T) {
	for name, spoil := range map[string]func(b byte) byte{
		"model.layers.0.mlp.up_proj.weight":      func(b byte) byte { return b ^ 0x04 }, // bitmap
		"model.layers.0.self_attn.q_proj.weight": func(byte) byte { return 0 },          // gaps
	} {
		tmp := t.TempDir()
		src, packed := filepath.Join(tmp, "src"), filepath.Join(tmp, "packed")
		writePrunedModel(t, src)
		if _, err := Pack(src, packed, PackOptions{}); err != nil {
			t.Fatal(err)
		}
		m, err := Open(packed)
		if err != nil {
			t.Fatal(err)
		}
		tn, _ := m.Tensor(name)
		p, _ := tn.Packed()
		at := p.Index.File.Header.DataStart + p.Index.Begin
		m.Close()
		path := filepath.Join(packed, PackedLayout.Single)
		b, _ := os.ReadFile(path)
		b[at] = spoil(b[at])
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		m, err = Open(packed)
		if err != nil {
			t.Fatal(err)
		}
		tn, _ = m.Tensor(name)
		err = tn.ReadBytes(make([]byte, tn.NumBytes()))
		m.Close()
		if err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), name) {
			t.Fatalf("damaged %s read: %v", p.Encoding, err)
		}
	}
}
