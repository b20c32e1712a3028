package budget

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"32G": 32 << 30, "512M": 512 << 20, "1.5GiB": 3 << 29, "2gb": 2e9, "100": 100,
		"64 MiB": 64 << 20, "1T": 1 << 40, "4k": 4096, "0": 0,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "12X", "1.2.3G", "abc", "1e30T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestLedger(t *testing.T) {
	l := New(100)
	a, err := l.Reserve("weights", 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Reserve("grads", 50); !errors.Is(err, ErrOverBudget) || !strings.Contains(err.Error(), "weights 60 B") {
		t.Fatalf("over-budget reservation: %v", err)
	}
	if l.Used() != 60 {
		t.Fatalf("a refused reservation must take nothing: used %d", l.Used())
	}
	b, err := l.Reserve("grads", 40)
	if err != nil {
		t.Fatal(err)
	}
	a.Release()
	a.Release() // idempotent
	b.Release()
	if l.Used() != 0 || l.Peak() != 100 {
		t.Fatalf("used %d peak %d", l.Used(), l.Peak())
	}
	if Default() <= 0 {
		t.Fatal("default budget")
	}
}

func TestCheckRunnable(t *testing.T) {
	if err := CheckRunnable(1000 << 40); err == nil || !strings.Contains(err.Error(), "more than this machine has") {
		t.Fatalf("1000 TiB: %v", err)
	}
	if err := CheckRunnable(64 << 20); err != nil {
		t.Fatal(err)
	}
}
