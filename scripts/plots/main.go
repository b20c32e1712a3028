// Command plots draws Elsa's training curves and the perplexity-vs-sparsity
// chart as PNG with gonum.org/v1/plot.
//
//	go run ./scripts/plots --metrics out.work/metrics.jsonl --out docs/elsa_curves.png
//	go run ./scripts/plots --table results.csv --out docs/ppl_vs_sparsity.png
//
// metrics.jsonl is what `elsa-stream --method elsa|elsa-l` writes (loss,
// primal residual per step). The table CSV (scripts/results_table.sh writes
// it) has lines "method,sparsity,ppl", sparsity as a fraction; further
// columns and N:M rows are ignored. The chart's y axis is logarithmic.
package main

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func main() {
	metrics := flag.String("metrics", "", "metrics.jsonl of an elsa run")
	table := flag.String("table", "", "CSV of method,sparsity,ppl")
	out := flag.String("out", "", "PNG to write")
	flag.Parse()
	if *out == "" || (*metrics == "") == (*table == "") {
		fmt.Fprintln(os.Stderr, "plots: give --out and exactly one of --metrics, --table")
		os.Exit(2)
	}
	var err error
	if *metrics != "" {
		err = curves(*metrics, *out)
	} else {
		err = pplChart(*table, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "plots:", err)
		os.Exit(1)
	}
}

// curves draws loss and primal residual ‖W − z‖/‖W‖ against the step.
func curves(path, out string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var loss, primal plotter.XYs
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m struct {
			Step   *int    `json:"step"`
			Loss   float64 `json:"loss"`
			Primal float64 `json:"primal_residual"`
		}
		if json.Unmarshal(sc.Bytes(), &m) != nil || m.Step == nil {
			continue // per-layer progress lines of baselines
		}
		loss = append(loss, plotter.XY{X: float64(*m.Step), Y: m.Loss})
		primal = append(primal, plotter.XY{X: float64(*m.Step), Y: m.Primal})
	}
	if len(loss) == 0 {
		return fmt.Errorf("%s: no step metrics", path)
	}
	p := plot.New()
	p.Title.Text = "Elsa training"
	p.X.Label.Text = "step"
	p.Y.Label.Text = "loss (nats/token) · primal residual"
	if err := plotutil.AddLines(p, "loss", loss, "‖W−z‖/‖W‖", primal); err != nil {
		return err
	}
	return p.Save(8*vg.Inch, 4*vg.Inch, out)
}

// pplChart draws perplexity against sparsity per method, log-scale y.
func pplChart(path, out string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return err
	}
	series := map[string]plotter.XYs{}
	for i, r := range rows {
		if len(r) < 3 {
			return fmt.Errorf("%s line %d: want method,sparsity,ppl[,...]", path, i+1)
		}
		s, err1 := strconv.ParseFloat(r[1], 64)
		ppl, err2 := strconv.ParseFloat(r[2], 64)
		if err1 != nil || err2 != nil {
			continue // header, or an N:M pattern
		}
		series[r[0]] = append(series[r[0]], plotter.XY{X: 100 * s, Y: ppl})
	}
	p := plot.New()
	p.Title.Text = "stories260K: perplexity vs sparsity"
	p.X.Label.Text = "sparsity (%)"
	p.Y.Label.Text = "perplexity (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var names []string
	for n := range series {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		pts := series[n]
		sort.Slice(pts, func(a, b int) bool { return pts[a].X < pts[b].X })
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		s.Color = plotutil.Color(i)
		s.Shape = plotutil.Shape(i)
		p.Add(l, s)
		p.Legend.Add(n, l, s)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(7*vg.Inch, 4.5*vg.Inch, out)
}
