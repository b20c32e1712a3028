// Package fsguard keeps a run from harming the user's files: it tells when
// two paths overlap (an output folder that is, contains or lies inside the
// model it is made from), takes exclusive locks that name the process
// holding them, and opens input files only when they are regular files (a
// FIFO or a device would block or never end).
package fsguard

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Resolve returns path as an absolute, clean path with every symbolic link
// of its longest existing prefix evaluated, so that two spellings of the
// same location compare equal even when the last elements do not exist
// yet (an output folder about to be created).
func Resolve(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	var rest []string
	for p := abs; ; p = filepath.Dir(p) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Join(append([]string{r}, rest...)...), nil
		}
		if p == filepath.Dir(p) {
			return abs, nil
		}
		rest = append([]string{filepath.Base(p)}, rest...)
	}
}

// Within reports whether path is dir or lies inside it (both resolved).
func Within(path, dir string) bool {
	p, err1 := Resolve(path)
	d, err2 := Resolve(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	if p == d {
		return true
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// Overlap reports whether a and b are the same path or one lies inside the
// other: writing or replacing one would touch the other.
func Overlap(a, b string) bool { return Within(a, b) || Within(b, a) }

// ErrNotRegular is wrapped by every refusal of a path that is not a
// regular file.
var ErrNotRegular = errors.New("not a regular file")

// OpenRegular opens path for reading only if it is a regular file. The
// open does not block on a FIFO (O_NONBLOCK), and anything but a regular
// file is refused naming what it is.
func OpenRegular(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is %s: %w", path, kind(fi.Mode()), ErrNotRegular)
	}
	return f, nil
}

// ReadFile reads a whole regular file (os.ReadFile that refuses FIFOs,
// devices and directories).
func ReadFile(path string) ([]byte, error) {
	f, err := OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Stdin names standard input where a data file is expected.
const Stdin = "-"

// IsStdin reports whether a data path deliberately names standard input
// ("-" or /dev/stdin): the one non-regular file data may come from.
func IsStdin(path string) bool { return path == Stdin || path == "/dev/stdin" }

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO (named pipe)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return "not a regular file (" + m.Type().String() + ")"
}

// ErrLocked is wrapped when another process holds a lock.
var ErrLocked = errors.New("in use by another run")

// Lock is an exclusive advisory lock (flock) on a lock file, held until
// Release or the end of the process (the kernel drops it when the process
// dies, so a killed run never leaves a stale lock).
type Lock struct {
	f      *os.File
	path   string
	remove bool
}

// Acquire takes the lock at path without waiting. When another process
// holds it, the error names that process (pid, command, start time) and
// what is locked (what, e.g. "the output folder /x/y"). With remove, the
// lock file is deleted on Release (a lock beside a folder that is not
// ours to litter); otherwise it stays (inside a folder we own).
func Acquire(path, what string, remove bool) (*Lock, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			owner, _ := io.ReadAll(io.LimitReader(f, 512))
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				who := strings.TrimSpace(string(owner))
				if who == "" {
					who = "another process"
				}
				return nil, fmt.Errorf("%s is %w: %s holds %s; wait for it to finish or choose another path", what, ErrLocked, who, path)
			}
			return nil, fmt.Errorf("lock %s: %w", what, err)
		}
		// A holder that removes its lock file on release may have done so
		// between our open and our flock: then we hold a lock on a file
		// nobody else can find. Only the file still at path counts.
		var a, b syscall.Stat_t
		if syscall.Fstat(int(f.Fd()), &a) == nil && syscall.Stat(path, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			l := &Lock{f: f, path: path, remove: remove}
			l.writeOwner()
			return l, nil
		}
		f.Close()
		if attempt > 10 {
			return nil, fmt.Errorf("lock %s: %s keeps being replaced", what, path)
		}
	}
}

func (l *Lock) writeOwner() {
	cmd := "elsa-stream"
	if len(os.Args) > 0 {
		cmd = filepath.Base(os.Args[0])
	}
	host, _ := os.Hostname()
	l.f.Truncate(0)
	l.f.WriteAt([]byte("pid "+strconv.Itoa(os.Getpid())+" ("+cmd+" on "+host+", since "+time.Now().Format(time.RFC3339)+")\n"), 0)
}

// Release drops the lock (and removes its file when asked to).
func (l *Lock) Release() {
	if l == nil || l.f == nil {
		return
	}
	if l.remove {
		os.Remove(l.path) // while still holding it: see Acquire
	}
	l.f.Close()
	l.f = nil
}

// RemoveStale deletes the folders in dir whose names start with prefix -
// temporary folders of processes that died before cleaning up - and
// returns their paths. Call it only while holding the lock that makes
// their owners dead (no live run writes them).
func RemoveStale(dir, prefix string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var removed []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			p := filepath.Join(dir, e.Name())
			if err := os.RemoveAll(p); err != nil {
				return removed, fmt.Errorf("remove stale temporary folder: %w", err)
			}
			removed = append(removed, p)
		}
	}
	return removed, nil
}

// AtomicFile is a file written under a temporary name beside its target
// and renamed onto it by Commit after an fsync: the target is either
// absent (or as it was) or complete.
type AtomicFile struct {
	*os.File
	target string
	done   bool
}

// CreateAtomic starts writing target. An existing target is refused unless
// replace is set.
func CreateAtomic(target string, replace bool) (*AtomicFile, error) {
	if _, err := os.Lstat(target); err == nil && !replace {
		return nil, fmt.Errorf("%s already exists", target)
	}
	f, err := os.CreateTemp(filepath.Dir(target), "."+filepath.Base(target)+".tmp-")
	if err != nil {
		return nil, err
	}
	return &AtomicFile{File: f, target: target}, nil
}

// Commit fsyncs the file and renames it onto the target.
func (a *AtomicFile) Commit() error {
	if a.done {
		return errors.New("fsguard: Commit after Commit or Abort")
	}
	a.done = true
	if err := a.Sync(); err != nil {
		a.File.Close()
		os.Remove(a.Name())
		return fmt.Errorf("fsync %s: %w", a.Name(), err)
	}
	if err := a.File.Close(); err != nil {
		os.Remove(a.Name())
		return err
	}
	if err := os.Rename(a.Name(), a.target); err != nil {
		os.Remove(a.Name())
		return err
	}
	if d, err := os.Open(filepath.Dir(a.target)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort removes the temporary file (a no-op after Commit).
func (a *AtomicFile) Abort() {
	if a.done {
		return
	}
	a.done = true
	a.File.Close()
	os.Remove(a.Name())
}
