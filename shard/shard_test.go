package shard

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	st "github.com/nlpodyssey/safetensors"
)

// testSpecs returns a small model-shaped tensor set with one of each dtype.
func testSpecs() []Spec {
	return []Spec{
		{"model.embed_tokens.weight", F32, []int64{16, 8}},
		{"model.layers.0.self_attn.q_proj.weight", BF16, []int64{8, 8}},
		{"model.layers.0.mlp.up_proj.weight", F16, []int64{12, 8}},
		{"model.layers.0.input_layernorm.weight", F32, []int64{8}},
		{"scalar", F32, []int64{}},
		{"empty", F32, []int64{0, 3}},
		{"state.q", I8, []int64{5}},
		{"state.e4m3", F8_E4M3, []int64{7}},
		{"state.e5m2", F8_E5M2, []int64{3}},
		{"model.norm.weight", F32, []int64{8}},
	}
}

func randomBytes(r *rand.Rand, n int64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func writeModel(t *testing.T, dir string, specs []Spec, maxShard int64, data map[string][]byte) {
	t.Helper()
	w, err := NewWriter(dir, specs, WriterOptions{MaxShardSize: maxShard, Metadata: map[string]string{"who": "test"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if err := w.WriteTensor(s.Name, data[s.Name]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.AddFile(ConfigFile, []byte(`{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":12,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":16}`)); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestWriteReadRoundTrip(t *testing.T) {
	for _, maxShard := range []int64{0, 100} {
		dir := filepath.Join(t.TempDir(), "out")
		r := rand.New(rand.NewPCG(1, 2))
		specs := testSpecs()
		data := map[string][]byte{}
		for _, s := range specs {
			data[s.Name] = randomBytes(r, s.numBytes())
		}
		writeModel(t, dir, specs, maxShard, data)

		m, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Names) != len(specs) {
			t.Fatalf("read %d tensors, wrote %d", len(m.Names), len(specs))
		}
		for _, s := range specs {
			tt, ok := m.Tensor(s.Name)
			if !ok {
				t.Fatalf("tensor %s missing", s.Name)
			}
			if string(tt.Bytes()) != string(data[s.Name]) || tt.DType != s.DType || len(tt.Shape) != len(s.Shape) {
				t.Fatalf("tensor %s differs after round trip", s.Name)
			}
		}
		entries, _ := os.ReadDir(dir)
		var shards int
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".safetensors") {
				shards++
			}
		}
		_, idxErr := os.Stat(filepath.Join(dir, IndexFile))
		if maxShard == 0 && (shards != 1 || idxErr == nil) {
			t.Fatalf("default shard size: %d shards, index present=%v; want one model.safetensors", shards, idxErr == nil)
		}
		if maxShard == 100 {
			if shards < 3 || idxErr != nil {
				t.Fatalf("max shard 100: %d shards, index err %v", shards, idxErr)
			}
			idx, err := ReadIndex(filepath.Join(dir, IndexFile))
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, s := range specs {
				total += s.numBytes()
			}
			if idx.TotalSize != total || len(idx.WeightMap) != len(specs) {
				t.Fatalf("index total_size %d (want %d), %d entries", idx.TotalSize, total, len(idx.WeightMap))
			}
			for _, e := range idx.WeightMap {
				if !regexp.MustCompile(`^model-0000[1-9]-of-0000[1-9]\.safetensors$`).MatchString(e.File) {
					t.Fatalf("shard name %q is not HF style", e.File)
				}
			}
		}
		if got := m.Files[0].Header.Metadata; got["format"] != "pt" || got["who"] != "test" {
			t.Fatalf("metadata %v", got)
		}
		m.Close()
	}
}

// TestLibraryReadsOurFiles cross-checks the writer with the independent
// nlpodyssey/safetensors parser (standard dtypes only: it has no FP8).
func TestLibraryReadsOurFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	var specs []Spec
	data := map[string][]byte{}
	r := rand.New(rand.NewPCG(3, 4))
	for _, s := range testSpecs() {
		if s.DType == F8_E4M3 || s.DType == F8_E5M2 || len(s.Shape) == 0 {
			continue
		}
		specs = append(specs, s)
		data[s.Name] = randomBytes(r, s.numBytes())
	}
	writeModel(t, dir, specs, 0, data)
	buf, err := os.ReadFile(filepath.Join(dir, SingleFile))
	if err != nil {
		t.Fatal(err)
	}
	lib, err := st.Deserialize(buf)
	if err != nil {
		t.Fatalf("library refuses our file: %v", err)
	}
	for _, s := range specs {
		v, ok := lib.Tensor(s.Name)
		if !ok || string(v.Data()) != string(data[s.Name]) || v.DType().String() != s.DType.String() {
			t.Fatalf("library reads %s differently", s.Name)
		}
	}
}

func TestWriterNeverLeavesPartialOutput(t *testing.T) {
	parent := t.TempDir()
	target := filepath.Join(parent, "out")
	specs := testSpecs()
	w, err := NewWriter(target, specs, WriterOptions{MaxShardSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteTensor(specs[0].Name, make([]byte, specs[0].numBytes())); err != nil {
		t.Fatal(err)
	}
	// Wrong size: the writer must fail and clean up.
	if err := w.WriteTensor(specs[1].Name, make([]byte, 3)); err == nil {
		t.Fatal("short tensor accepted")
	}
	if err := w.Commit(); err == nil {
		t.Fatal("commit after failure succeeded")
	}
	entries, _ := os.ReadDir(parent)
	if len(entries) != 0 {
		t.Fatalf("left behind %v", entries[0].Name())
	}

	// An existing target is refused without Force and kept intact on failure.
	os.Mkdir(target, 0o755)
	os.WriteFile(filepath.Join(target, "keep"), []byte("x"), 0o644)
	if _, err := NewWriter(target, specs, WriterOptions{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("existing output not refused: %v", err)
	}
	w, err = NewWriter(target, specs, WriterOptions{Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil || !strings.Contains(err.Error(), "not written") {
		t.Fatalf("commit with missing tensors: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "keep")); string(b) != "x" {
		t.Fatal("failed forced write damaged the existing target")
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Fatalf("temporary folder left behind: %d entries", len(entries))
	}
}

// header builds a safetensors file from a raw JSON header and data length.
func header(js string, dataLen int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	b = append(b, js...)
	return append(b, make([]byte, dataLen)...)
}

func TestHeaderValidation(t *testing.T) {
	huge := binary.LittleEndian.AppendUint64(nil, MaxHeaderSize+1)
	past := binary.LittleEndian.AppendUint64(nil, 1000)
	cases := []struct {
		name string
		file []byte
		want string
	}{
		{"short file", []byte{1, 2, 3}, "too short"},
		{"header over limit", append(huge, make([]byte, 16)...), "over the 100000000-byte limit"},
		{"header past EOF", append(past, "{}"...), "runs past the end of the file"},
		{"invalid json", header(`{"a":`, 0), "not valid JSON"},
		{"not an object", header(`[1,2]`, 0), "not valid JSON"},
		{"duplicate name", header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), `tensor "a": named twice`},
		{"unknown dtype", header(`{"a":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}}`, 1), `tensor "a": unknown dtype "F4"`},
		{"size mismatch", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), `tensor "a": shape [2] x F32 (8 bytes) does not match`},
		{"offset out of range", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), `tensor "a": data_offsets [0, 8) run past the end`},
		{"overlap", header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), `tensor "b": overlaps`},
		{"hole", header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, 12), `tensor "b": leaves a hole`},
		{"trailing bytes", header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8), "file has 8 data bytes"},
		{"negative dim", header(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), "not a non-negative integer"},
		{"missing key", header(`{"a":{"dtype":"F32","shape":[1]}}`, 4), "needs dtype, shape and data_offsets"},
		{"extra key", header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4), `unexpected key "x"`},
		{"overflowing shape", header(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), "overflows"},
		{"metadata not string", header(`{"__metadata__":{"k":1}}`, 0), "value must be a string"},
		{"end before begin", header(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), "end before they begin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.safetensors")
			if err := os.WriteFile(path, c.file, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := OpenFile(path)
			if err == nil {
				t.Fatalf("accepted; want error containing %q", c.want)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q; want ErrInvalid naming %s and containing %q", err, path, c.want)
			}
		})
	}
}

func TestIndexValidation(t *testing.T) {
	one := header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4)
	cases := []struct {
		name, index string
		want        string
	}{
		{"missing file", `{"weight_map":{"a":"nope.safetensors"}}`, `names shard "nope.safetensors", which does not exist`},
		{"missing tensor", `{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`, `tensor "b" is mapped to s1.safetensors, which does not hold it`},
		{"listed twice", `{"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}}`, `tensor "a": listed twice`},
		{"absolute path", `{"weight_map":{"a":"/etc/passwd"}}`, "absolute paths are refused"},
		{"parent escape", `{"weight_map":{"a":"../s1.safetensors"}}`, "leaves the model folder"},
		{"nested escape", `{"weight_map":{"a":"sub/../../s1.safetensors"}}`, "leaves the model folder"},
		{"no weight map", `{"metadata":{}}`, "has no weight_map"},
		{"unlisted tensor", `{"weight_map":{}}`, ""},
		{"bad json", `{"weight_map":`, "not valid JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "s1.safetensors"), one, 0o644)
			os.WriteFile(filepath.Join(dir, IndexFile), []byte(c.index), 0o644)
			m, err := OpenTensors(dir)
			if c.name == "unlisted tensor" {
				// No shard named: nothing opened, nothing to hold "a". Valid but empty.
				if err != nil || len(m.Names) != 0 {
					t.Fatalf("empty index: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want %q", c.want)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q; want ErrInvalid containing %q", err, c.want)
			}
		})
	}
	// A tensor in a shard that the index maps elsewhere is refused.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "s1.safetensors"), one, 0o644)
	os.WriteFile(filepath.Join(dir, "s2.safetensors"), header(`{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), 0o644)
	os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}`), 0o644)
	if _, err := OpenTensors(dir); err == nil || !strings.Contains(err.Error(), `tensor "b" in s2.safetensors is not mapped to that file`) {
		t.Fatalf("misplaced tensor: %v", err)
	}
}

func TestConversions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	vals := []float32{0, 1, -2.5, 3.140625, 65504, -1e-7, float32(math.Inf(1))}
	specs := []Spec{{"f32", F32, []int64{7}}, {"f16", F16, []int64{7}}, {"bf16", BF16, []int64{7}}}
	data := map[string][]byte{}
	for _, s := range specs {
		b, err := EncodeFloat32(nil, vals, s.DType)
		if err != nil {
			t.Fatal(err)
		}
		data[s.Name] = b
	}
	writeModel(t, dir, specs, 0, data)
	m, err := OpenTensors(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want := map[string][]float32{
		"f32":  vals,
		"f16":  {0, 1, -2.5, 3.140625, 65504, -1.1920929e-07, float32(math.Inf(1))},
		"bf16": {0, 1, -2.5, 3.140625, 65536, -1.0011718e-07, float32(math.Inf(1))},
	}
	for _, s := range specs {
		tt, _ := m.Tensor(s.Name)
		got := make([]float32, 7)
		if err := tt.ReadFloat32(got); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != want[s.Name][i] {
				t.Fatalf("%s[%d] = %v, want %v", s.Name, i, got[i], want[s.Name][i])
			}
		}
	}
	tt, _ := m.Tensor("f32")
	if v, err := tt.Float32s(); err != nil || v[2] != -2.5 {
		t.Fatalf("zero-copy F32 view: %v %v", v, err)
	}
	if _, err := tt.Uint16s(); err == nil {
		t.Fatal("Uint16s accepted an F32 tensor")
	}
}

func TestUnalignedViewRefused(t *testing.T) {
	// A 1-byte tensor first puts the F32 tensor at an odd offset: the view is
	// refused, the converting read still works.
	js := `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}}`
	for len(js)%8 != 0 {
		js += " "
	}
	file := header(js, 5)
	binary.LittleEndian.PutUint32(file[8+len(js)+1:], math.Float32bits(1.5))
	path := filepath.Join(t.TempDir(), "u.safetensors")
	os.WriteFile(path, file, 0o644)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := f.Tensor("b")
	if _, err := b.Float32s(); err == nil || !strings.Contains(err.Error(), "not 4-byte aligned") {
		t.Fatalf("unaligned view: %v", err)
	}
	v := make([]float32, 1)
	if err := b.ReadFloat32(v); err != nil || v[0] != 1.5 {
		t.Fatalf("converting read: %v %v", v, err)
	}
}

func TestConfig(t *testing.T) {
	_, err := ParseConfig("c.json", []byte(`{"architectures":["PhiForCausalLM"],"hidden_size":8}`))
	if err == nil || !strings.Contains(err.Error(), "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM") {
		t.Fatalf("unsupported architecture: %v", err)
	}
	c, err := ParseConfig("c.json", []byte(`{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
		"num_hidden_layers":2,"num_attention_heads":8,"num_key_value_heads":2,"vocab_size":100,
		"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4,"original_max_position_embeddings":8192}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.HeadDim != 8 || !c.QKVBias() || c.OBias() || c.RopeScaling.Kind() != "llama3" || c.RMSNormEps != 1e-6 {
		t.Fatalf("defaults: %+v", c)
	}
	for _, bad := range []string{
		`{"architectures":["LlamaForCausalLM"],"hidden_size":0,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1}`,
		`{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3,"vocab_size":1}`,
		`{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":1,"vocab_size":1,"rope_scaling":{"type":"yarn","factor":2}}`,
	} {
		if _, err := ParseConfig("c.json", []byte(bad)); err == nil {
			t.Fatalf("accepted %s", bad)
		}
	}
}

// TestNoMmapReadsTheSame: pread mode returns the same tensors as mmap.
func TestNoMmapReadsTheSame(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	r := rand.New(rand.NewPCG(9, 9))
	specs := testSpecs()
	data := map[string][]byte{}
	for _, s := range specs {
		data[s.Name] = randomBytes(r, s.numBytes())
	}
	writeModel(t, dir, specs, 100, data)
	m, err := OpenWith(dir, Options{NoMmap: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, s := range specs {
		tt, _ := m.Tensor(s.Name)
		if tt.File.Mapped() || tt.Bytes() != nil {
			t.Fatal("NoMmap file is mapped")
		}
		b := make([]byte, tt.NumBytes())
		if err := tt.ReadBytes(b); err != nil || string(b) != string(data[s.Name]) {
			t.Fatalf("%s: pread differs: %v", s.Name, err)
		}
		if s.DType.IsFloat() {
			f := make([]float32, tt.NumElements())
			if err := tt.ReadFloat32(f); err != nil {
				t.Fatal(err)
			}
			if err := tt.Advise(DontNeed); err != nil {
				t.Fatal(err)
			}
		}
	}
	mm, _ := Open(dir)
	defer mm.Close()
	for _, name := range mm.Names {
		tt, _ := mm.Tensor(name)
		if err := tt.Advise(WillNeed); err != nil {
			t.Fatal(err)
		}
		if err := tt.Advise(DontNeed); err != nil {
			t.Fatal(err)
		}
		if string(tt.Bytes()) != string(data[name]) {
			t.Fatalf("%s changed after DONTNEED", name)
		}
	}
}
