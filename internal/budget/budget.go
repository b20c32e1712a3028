// Package budget is the memory ledger: every large buffer (block weights,
// gradients, activations, checkpoints, optimizer state, I/O buffers) and the
// resident pages of mmapped files are reserved here before use, and the
// total never exceeds the limit. stream and lowmem both use it.
package budget

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ErrOverBudget is wrapped by every refused reservation.
var ErrOverBudget = errors.New("over the memory budget")

// Ledger tracks reservations against a byte limit. It is safe for
// concurrent use (the prefetcher reserves while compute releases).
type Ledger struct {
	mu    sync.Mutex
	limit int64
	used  int64
	peak  int64
	by    map[string]int64
}

// New returns a ledger with the given limit in bytes.
func New(limit int64) *Ledger { return &Ledger{limit: limit, by: map[string]int64{}} }

// Reservation is a held amount; Release returns it (idempotent).
type Reservation struct {
	l     *Ledger
	name  string
	bytes int64
	done  bool
}

// Reserve takes bytes for name, or fails without taking anything.
func (l *Ledger) Reserve(name string, bytes int64) (*Reservation, error) {
	if bytes < 0 {
		panic("budget: negative reservation")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.used+bytes > l.limit {
		return nil, fmt.Errorf("%w: %s needs %s but only %s of %s are free (held: %s)", ErrOverBudget,
			name, Format(bytes), Format(l.limit-l.used), Format(l.limit), l.summaryLocked())
	}
	l.used += bytes
	l.peak = max(l.peak, l.used)
	l.by[name] += bytes
	return &Reservation{l: l, name: name, bytes: bytes}, nil
}

// Release returns the reservation to the ledger.
func (r *Reservation) Release() {
	if r == nil || r.done {
		return
	}
	r.done = true
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	r.l.used -= r.bytes
	if r.l.by[r.name] -= r.bytes; r.l.by[r.name] == 0 {
		delete(r.l.by, r.name)
	}
}

// Limit, Used and Peak report the ledger in bytes.
func (l *Ledger) Limit() int64 { return l.limit }

// Used is the bytes held now.
func (l *Ledger) Used() int64 { l.mu.Lock(); defer l.mu.Unlock(); return l.used }

// Peak is the most bytes ever held at once.
func (l *Ledger) Peak() int64 { l.mu.Lock(); defer l.mu.Unlock(); return l.peak }

func (l *Ledger) summaryLocked() string {
	var names []string
	for n := range l.by {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, n+" "+Format(l.by[n]))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return strings.Join(parts, ", ")
}

// LimitRuntime sets the Go runtime's soft memory limit to the budget minus
// outsideGo, the bytes that live outside Go's memory (resident pages of
// mmapped files), minus NonGoMargin. Without it the collector lets the heap
// grow to twice the live data between cycles (GOGC=100), and a streaming
// sweep that frees a block per layer would overshoot the budget by that
// garbage.
func (l *Ledger) LimitRuntime(outsideGo int64) {
	debug.SetMemoryLimit(max(64<<20, l.limit-outsideGo-NonGoMargin))
}

// NonGoMargin is RSS that neither the Go memory limit nor the ledger sees:
// the executable's own resident text and data and the C runtime (measured:
// a 1.2 GiB sweep peaked 31 MiB over the budget without it).
const NonGoMargin = 64 << 20

// ParseSize parses a --mem-budget value: a number with an optional unit.
// K, M, G, T (and KiB, MiB, GiB, TiB) are powers of 1024, as in `free -g`;
// KB, MB, GB, TB are powers of 1000; a bare number is bytes. Fractions
// ("1.5GiB") are allowed; case does not matter.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size (want e.g. 32G, 512M, 1.5GiB)")
	}
	i := len(t)
	for i > 0 && (t[i-1] < '0' || t[i-1] > '9') && t[i-1] != '.' {
		i--
	}
	num, unit := t[:i], strings.ToUpper(strings.TrimSpace(t[i:]))
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: %q is not a non-negative number (want e.g. 32G, 512M, 1.5GiB)", s, num)
	}
	mult := map[string]float64{
		"": 1, "B": 1,
		"K": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10, "KB": 1e3,
		"M": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20, "MB": 1e6,
		"G": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30, "GB": 1e9,
		"T": 1 << 40, "TI": 1 << 40, "TIB": 1 << 40, "TB": 1e12,
	}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("size %q: unknown unit %q (want K, M, G, T, KiB..TiB or KB..TB)", s, unit)
	}
	b := v * mult
	if b > 1<<62 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(b), nil
}

// Format renders bytes as a short human string ("1.50 GiB").
func Format(b int64) string {
	switch {
	case b >= 1<<40:
		return fmt.Sprintf("%.2f TiB", float64(b)/(1<<40))
	case b >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

// DefaultFraction of the available memory is the budget when none is given.
const DefaultFraction = 0.8

// Default is DefaultFraction of MemAvailable from /proc/meminfo (or 4 GiB
// when that cannot be read).
func Default() int64 {
	if m := meminfo(); m["MemAvailable"] > 0 {
		return int64(float64(m["MemAvailable"]) * DefaultFraction)
	}
	return 4 << 30
}

// CheckRunnable refuses a budget for a run on this machine that exceeds
// its RAM plus swap: such a budget limits nothing, and the run would be
// killed by the kernel instead of refused by the plan. (Planning for
// another machine is not a run: `plan` takes any budget.)
func CheckRunnable(b int64) error {
	m := meminfo()
	total, swap := m["MemTotal"], m["SwapTotal"]
	if total > 0 && b > total+swap {
		return fmt.Errorf("%s is more than this machine has (%s of RAM, %s of swap)", Format(b), Format(total), Format(swap))
	}
	return nil
}

// meminfo reads /proc/meminfo into bytes per field (empty when unreadable).
func meminfo() map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 {
			if kb, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
				out[strings.TrimSuffix(fields[0], ":")] = kb << 10
			}
		}
	}
	return out
}

// PeakRSS is the process's maximum resident set size so far (0 when the
// system does not say).
func PeakRSS() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Maxrss * 1024 // Linux reports KiB
}
