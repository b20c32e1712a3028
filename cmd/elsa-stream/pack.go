package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/shard"
)

func runPack(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pack IN OUT", stderr)
	force := fs.Bool("force", false, "replace an existing output folder")
	asJSON := fs.Bool("json", false, "print the manifest's summary as JSON")
	pos, err := parseFlags(fs, args, 2)
	if err != nil {
		return err
	}
	mf, err := shard.Pack(pos[0], pos[1], shard.PackOptions{Force: *force})
	if err != nil {
		return err
	}
	encodings := map[string]int{}
	for _, t := range mf.Tensors {
		encodings[t.Encoding]++
	}
	bitmaps, gaps := encodings[shard.EncodingBitmap], encodings[shard.EncodingGaps]
	ratio := float64(mf.DenseBytes) / float64(max(1, mf.PackedBytes))
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"out": pos[1], "tensors": len(mf.Tensors), "bitmap_tensors": bitmaps,
			"gaps_tensors": gaps, "dense_bytes": mf.DenseBytes, "packed_bytes": mf.PackedBytes, "ratio": ratio})
	}
	fmt.Fprintf(stdout, "packed %s into %s: %d tensors (%d as bitmaps, %d gap-coded), %s -> %s (%.2fx smaller)\n",
		pos[0], pos[1], len(mf.Tensors), bitmaps, gaps, budget.Format(mf.DenseBytes), budget.Format(mf.PackedBytes), ratio)
	return nil
}

func runUnpack(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("unpack PACKED OUT", stderr)
	force := fs.Bool("force", false, "replace an existing output folder")
	pos, err := parseFlags(fs, args, 2)
	if err != nil {
		return err
	}
	if err := shard.Unpack(pos[0], pos[1], shard.PackOptions{Force: *force}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "unpacked %s into the Hugging Face folder %s\n", pos[0], pos[1])
	return nil
}
