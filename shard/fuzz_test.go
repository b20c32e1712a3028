package shard

import (
	"testing"
)

// FuzzParseHeader feeds arbitrary bytes to the header parser: it must never
// panic, and whatever it accepts must tile the data section exactly.
// Seeds: f.Add below plus testdata/fuzz/FuzzParseHeader.
func FuzzParseHeader(f *testing.F) {
	f.Add(header(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add(header(`{"__metadata__":{"format":"pt"},"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"s":{"dtype":"F8_E4M3","shape":[],"data_offsets":[8,9]}}`, 9))
	f.Add(EncodeHeader(testSpecs(), map[string]string{"format": "pt"}))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHeader("fuzz", data, int64(len(data)))
		if err != nil {
			return
		}
		var pos int64
		for _, ti := range h.Tensors {
			if ti.Begin != pos || ti.End-ti.Begin != ti.NumElements()*ti.DType.Size() {
				t.Fatalf("accepted a bad layout: %+v", ti)
			}
			pos = ti.End
		}
		if pos != int64(len(data))-h.DataStart {
			t.Fatalf("accepted tensors ending at %d of %d data bytes", pos, int64(len(data))-h.DataStart)
		}
	})
}

// FuzzParseIndex feeds arbitrary JSON to the index parser: no panic, and no
// accepted shard path may be absolute or climb out of the model folder.
func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":8},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../x"}}`))
	f.Add([]byte(`{"weight_map":{"a":"sub/./x.safetensors"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := ParseIndex("fuzz", data)
		if err != nil {
			return
		}
		for _, e := range x.WeightMap {
			if checkShardPath(e.File) != nil {
				t.Fatalf("accepted shard path %q", e.File)
			}
		}
	})
}
