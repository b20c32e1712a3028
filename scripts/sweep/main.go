// Command sweep runs training-step gradient sweeps (forward + backward over
// every block, gradients handed to a no-op consumer) on a model within a
// memory budget, and reports step time, the share of time compute waited
// for I/O, and the ledger peak. With --resident it first converts the whole
// model to float32 and sweeps from memory: the all-resident baseline.
//
//	/usr/bin/time -v go run ./scripts/sweep --model /tmp/synth --mem-budget 2G --batch 4 --seqlen 256
//
// (Build it first, `go build -o /tmp/sweep ./scripts/sweep`, so /usr/bin/time
// measures the sweep, not the compiler.)
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"github.com/elsa-stream/elsa-stream/internal/budget"
	"github.com/elsa-stream/elsa-stream/model"
	"github.com/elsa-stream/elsa-stream/stream"
)

type sink struct{ sum float64 }

func (s *sink) Block(u stream.Unit, w, g *model.Block) error {
	for _, v := range append(g.AttnNorm, g.MLPNorm...) {
		s.sum += float64(v)
	}
	return nil
}

func (s *sink) LMHead(lo, hi int, g []float32) error { return nil }

func (s *sink) Head(norm []float32, ids []int, rows []float32) error { return nil }

func main() {
	dir := flag.String("model", "", "model folder")
	var limit int64
	flag.Func("mem-budget", "memory budget (32G, 512M, ...; default 80% of available)", func(v string) (err error) {
		limit, err = budget.ParseSize(v)
		return err
	})
	batch := flag.Int("batch", 4, "windows per step")
	seqlen := flag.Int("seqlen", 256, "tokens per window")
	steps := flag.Int("steps", 2, "steps (the first warms the page cache)")
	resident := flag.Bool("resident", false, "convert the whole model first and sweep from memory")
	noMmap := flag.Bool("no-mmap", false, "pread instead of mmap")
	spillDir := flag.String("spill", os.TempDir(), "where checkpoints go when the plan spills them")
	flag.Parse()
	if limit == 0 {
		limit = budget.Default()
	}
	ledger := budget.New(limit)
	src, err := stream.OpenWith(*dir, stream.Options{NoMmap: *noMmap, Ledger: ledger})
	if err != nil {
		fail(err)
	}
	defer src.Close()
	sw := src.Sweeper()
	wb := 2.0
	if src.Model.Config.TorchDType == "float32" {
		wb = 4
	}
	plan, err := stream.MakePlan(stream.PlanInput{Cfg: src.Cfg, WeightBytes: wb, Batch: *batch, SeqLen: *seqlen, Budget: limit, Job: stream.Grad, GFLOPS: 1})
	if err != nil {
		fail(err)
	}
	opt := stream.SweepOptions{MicroBatch: plan.MicroBatch}
	if plan.Granularity != "layer" {
		opt.Granularity = model.Attention
	}
	if plan.SpillActivations {
		opt.SpillDir = *spillDir
	}
	var mapped int64
	for _, c := range plan.RAM {
		if c.Name == "mapped pages of the tensor being converted" {
			mapped = c.Bytes
		}
	}
	ledger.LimitRuntime(mapped)
	hold, err := ledger.Reserve("grad plan", plan.RAMTotal-mapped)
	if err != nil {
		fail(err)
	}
	defer hold.Release()
	if *resident {
		t := time.Now()
		if err := sw.MakeResident(); err != nil {
			fail(err)
		}
		fmt.Printf("resident: converted the whole model in %.2fs\n", time.Since(t).Seconds())
	}
	r := rand.New(rand.NewPCG(1, 1))
	n := *batch * *seqlen
	inputs, targets := make([]int, n), make([]int, n)
	for i := range inputs {
		inputs[i], targets[i] = r.IntN(src.Cfg.Vocab), r.IntN(src.Cfg.Vocab)
	}
	fmt.Printf("plan: %s, micro-batch %d, spill %v, planned RAM %s of %s\n", plan.Granularity, plan.MicroBatch, plan.SpillActivations, budget.Format(plan.RAMTotal), budget.Format(limit))
	var s sink
	for step := 0; step < *steps; step++ {
		sw.IOWait = 0
		t := time.Now()
		res, err := sw.GradientSweep(context.Background(), inputs, targets, *batch, *seqlen, opt, &s)
		if err != nil {
			fail(err)
		}
		sec := time.Since(t).Seconds()
		fmt.Printf("step %d: loss %.4f, %.2fs, %.0f tokens/s, I/O wait %.2fs (%.0f%%)\n", step, res.SumNLL/float64(res.Tokens), sec,
			float64(n)/sec, sw.IOWait.Seconds(), 100*sw.IOWait.Seconds()/sec)
	}
	fmt.Printf("ledger peak %s of %s\n", budget.Format(ledger.Peak()), budget.Format(limit))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "sweep:", err)
	os.Exit(1)
}
