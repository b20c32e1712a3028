package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"text/tabwriter"

	"github.com/elsa-stream/elsa-stream/shard"
)

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("inspect", stderr)
	asJSON := fs.Bool("json", false, "print one JSON object instead of tables")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: elsa-stream inspect DIR [--json]")
		fs.PrintDefaults()
	}
	pos, err := parseFlags(fs, args, 1)
	if err != nil {
		return err
	}
	m, err := shard.Open(pos[0])
	if err != nil {
		return err
	}
	defer m.Close()
	type row struct {
		Name   string  `json:"name"`
		DType  string  `json:"dtype"`
		Shape  []int64 `json:"shape"`
		Params int64   `json:"params"`
		Bytes  int64   `json:"bytes"`
		File   string  `json:"file"`
	}
	var rows []row
	for _, name := range m.Names {
		t, _ := m.Tensor(name)
		rows = append(rows, row{name, t.DType.String(), t.Shape, t.NumElements(), t.NumBytes(), filepath.Base(t.File.Path)})
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{
			"dir": m.Dir, "architecture": m.Config.Architecture(), "config": m.Config,
			"files": len(m.Files), "tensors": rows,
			"total_params": m.TotalParams(), "total_bytes": m.TotalBytes(),
		})
	}
	fmt.Fprintf(stdout, "%s\n%s\n\n", m.Dir, m.Config)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "name\tdtype\tshape\tparams\tbytes\tfile\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%s\t\n", r.Name, r.DType, r.Shape, r.Params, r.Bytes, r.File)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n%d tensors in %d file(s): %s parameters, %s bytes\n",
		len(rows), len(m.Files), commas(m.TotalParams()), commas(m.TotalBytes()))
	return nil
}

// commas renders 260032 as "260,032".
func commas(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + commas(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
