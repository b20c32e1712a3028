package mpi

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// mpirunArgs returns the command that starts n ranks of args on this
// machine over loopback TCP (as CI runs them), or skips t when mpirun is
// absent or the binary has no MPI.
func mpirunArgs(t *testing.T, n int, args ...string) *exec.Cmd {
	t.Helper()
	if !Built {
		t.Skip("built without -tags mpi")
	}
	path, err := exec.LookPath("mpirun")
	if err != nil {
		t.Skip("mpirun not installed (openmpi-bin)")
	}
	base := []string{"--oversubscribe", "--allow-run-as-root", "-np", strconv.Itoa(n), "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"}
	return exec.Command(path, append(base, args...)...)
}

// TestWorldSums runs this test binary as 4 ranks; each checks the sums.
func TestWorldSums(t *testing.T) {
	if launchedSize() > 1 {
		checkSums(t)
		return
	}
	cmd := mpirunArgs(t, 4, os.Args[0], "-test.run", "^TestWorldSums$", "-test.v")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.Count(string(out), "--- PASS: TestWorldSums") != 4 {
		t.Fatalf("mpirun: %v\n%s", err, out)
	}
}

func checkSums(t *testing.T) {
	c, err := World()
	if err != nil {
		t.Fatal(err)
	}
	defer Finalize()
	r, n := c.Rank(), c.Size()
	if n != 4 {
		t.Fatalf("size %d, want 4", n)
	}
	x := []float32{float32(r), 1, float32(r * r)}
	if err := c.SumFloat32(x); err != nil {
		t.Fatal(err)
	}
	if x[0] != 6 || x[1] != 4 || x[2] != 14 {
		t.Fatalf("rank %d: sum %v", r, x)
	}
	y := []float64{0.5 * float64(r)}
	if err := c.SumFloat64(y); err != nil || y[0] != 3 {
		t.Fatalf("rank %d: sum %v (%v)", r, y, err)
	}
	lo, hi, err := c.MinMaxInt(10 + r)
	if err != nil || lo != 10 || hi != 13 {
		t.Fatalf("rank %d: min/max %d %d (%v)", r, lo, hi, err)
	}
	b := []byte{byte(r), 7}
	if err := c.Bcast(b); err != nil || b[0] != 0 || b[1] != 7 {
		t.Fatalf("rank %d: bcast %v (%v)", r, b, err)
	}
	if s := c.Stats(); s.Bytes != 12+8 {
		t.Fatalf("stats %+v", s)
	}
}

// TestWithoutMPIRefusesLauncher: a binary without MPI started as a rank
// says so instead of running alone N times.
func TestWithoutMPIRefusesLauncher(t *testing.T) {
	if Built {
		t.Skip("built with MPI")
	}
	t.Setenv("OMPI_COMM_WORLD_SIZE", "4")
	if _, err := World(); err == nil || !strings.Contains(err.Error(), "-tags mpi") {
		t.Fatalf("World under a launcher: %v", err)
	}
	t.Setenv("OMPI_COMM_WORLD_SIZE", "")
	if c, err := World(); err != nil || c.Size() != 1 {
		t.Fatalf("World alone: %v %v", c, err)
	}
}
