// Command elsa-stream prunes LLaMA-family models to extreme sparsity while
// streaming weights and optimizer state from disk within a memory budget.
//
// Sub-commands:
//
//	prune    prune a model (also what `elsa-stream --flags` runs)
//	eval     perplexity of a model on a data file (block by block)
//	tokenize encode a data file into token ids once (for pipelines)
//	inspect  architecture summary and tensor table of a model folder
//	import   convert a llama2.c checkpoint into a Hugging Face folder
//	pack     write the compact sparse form of a pruned model
//	unpack   turn a packed folder back into the Hugging Face checkpoint
//	generate sample text from a dense or packed model (KV cache)
//
// Exit codes: 0 success, 1 the job failed (bad input file, I/O error), 2 bad
// command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/elsa-stream/elsa-stream/prune"
)

// exitUsage marks command-line errors (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"prune", "prune a model (the default command)", runPrune},
		{"eval", "perplexity of a model on a data file", runEval},
		{"plan", "memory plan and time estimate for a model and a budget", runPlan},
		{"tokenize", "encode a data file once into the id stream --format tokens reads", runTokenize},
		{"inspect", "architecture summary and tensor table of a model folder", runInspect},
		{"import", "convert a llama2.c checkpoint into a Hugging Face folder", runImport},
		{"pack", "write the compact sparse form of a pruned model (its own folder)", runPack},
		{"unpack", "turn a packed folder back into the Hugging Face checkpoint, bit for bit", runUnpack},
		{"generate", "sample text from a dense or packed model (KV cache)", runGenerate},
	}
}

func main() {
	// SIGINT and SIGTERM cancel the run, which stops at its next safe
	// point (Elsa: with the last step committed); a second signal kills.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var got atomic.Value
	go func() {
		sig := <-sigs
		got.Store(sig)
		signal.Stop(sigs)
		fmt.Fprintf(os.Stderr, "\nelsa-stream: %v: stopping at the next safe point (again to kill)\n", sig)
		cancel()
	}()
	stop := startProfile(os.Getenv("ELSA_CPUPROFILE"))
	code := runContext(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if sig, ok := got.Load().(syscall.Signal); ok && code != 0 {
		code = 128 + int(sig) // 130 for SIGINT, 143 for SIGTERM, as shells report
	}
	os.Exit(code)
}

// startProfile writes a CPU profile of the whole run to path (set by
// ELSA_CPUPROFILE, for `go tool pprof`) and returns what stops it; with no
// path it does nothing.
func startProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "elsa-stream: ELSA_CPUPROFILE: %v (no profile)\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "elsa-stream: ELSA_CPUPROFILE: %v\n", err)
		}
	}
}

// run is runContext without cancellation (tests).
func run(args []string, stdout, stderr io.Writer) int {
	return runContext(context.Background(), args, stdout, stderr)
}

func runContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "--help") {
		usage(stderr)
		return 0
	}
	// elsa-stream with no sub-command (or only flags) runs prune: the
	// documented usage is `elsa-stream --mem-budget 32G ...`.
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		args = append([]string{"prune"}, args...)
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			var stopped *prune.Interrupted
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.As(err, new(usageError)) || errors.Is(err, prune.ErrInvalid):
				fmt.Fprintf(stderr, "elsa-stream %s: %v\n", c.name, err)
				return 2
			case errors.As(err, &stopped):
				fmt.Fprintf(stderr, "elsa-stream %s: %v\n", c.name, err)
				if stopped.Elsa && stopped.Committed >= 0 {
					fmt.Fprintf(stderr, "elsa-stream %s: the same command with --resume continues after step %d\n", c.name, stopped.Committed)
				}
				return 1
			case errors.Is(err, prune.ErrOutputExists):
				fmt.Fprintf(stderr, "elsa-stream %s: %v (use --force to replace it)\n", c.name, err)
				return 1
			default:
				fmt.Fprintf(stderr, "elsa-stream %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintf(stderr, "elsa-stream: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: elsa-stream <command> [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'elsa-stream <command> -h' for the flags of a command.")
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("elsa-stream "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args, turning flag errors and stray arguments into usage
// errors (one line; -h prints the full usage).
func parseFlags(fs *flag.FlagSet, args []string, positional int) ([]string, error) {
	out := fs.Output()
	fs.SetOutput(io.Discard)
	defer fs.SetOutput(out)
	parse := func(a []string) error {
		err := fs.Parse(a)
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fs.Usage()
			return err
		}
		if err != nil {
			return usageError{err.Error() + " (run with -h for usage)"}
		}
		return nil
	}
	if err := parse(args); err != nil {
		return nil, err
	}
	// Allow flags after positional arguments (elsa-stream inspect DIR --json).
	var pos []string
	rest := fs.Args()
	for len(rest) > 0 {
		pos = append(pos, rest[0])
		if err := parse(rest[1:]); err != nil {
			return nil, err
		}
		rest = fs.Args()
	}
	if positional >= 0 && len(pos) != positional {
		return nil, usagef("want %d argument(s), got %d: %q", positional, len(pos), pos)
	}
	return pos, nil
}

// setFlags names the flags given on the command line, so that a value
// outside a flag's range is refused instead of silently meaning "the
// default" (as -1 did for --sparsity).
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}
