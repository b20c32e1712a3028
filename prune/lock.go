package prune

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/elsa-stream/elsa-stream/internal/fsguard"
	"github.com/elsa-stream/elsa-stream/shard"
	"github.com/elsa-stream/elsa-stream/stream"
)

// runLocks are the exclusive locks a run holds from its first write on.
type runLocks struct{ work, out *fsguard.Lock }

// lock locks the work folder (a lock file inside it) and the output target
// (a lock file beside it, removed at the end), re-checks under the lock
// that the target may be written, and removes the temporary folders that
// runs which died left beside the target and in the work folder.
func (r *run) lock() (*runLocks, error) {
	j := &r.job
	out, work := filepath.Clean(j.Out), j.WorkDir()
	l := &runLocks{}
	var err error
	if l.work, err = fsguard.Acquire(filepath.Join(work, ".lock"), "the work folder "+work, false); err != nil {
		return nil, err
	}
	if l.out, err = fsguard.Acquire(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".lock"), "the output folder "+out, true); err != nil {
		l.release()
		return nil, err
	}
	if _, err := os.Stat(out); err == nil && !j.Force {
		l.release()
		return nil, fmt.Errorf("%s %w", out, ErrOutputExists)
	}
	stale, err := shard.RemoveStaleTemps(out)
	if err == nil {
		var more []string
		more, err = stream.RemoveStaleCheckpoints(work)
		stale = append(stale, more...)
	}
	if err != nil {
		l.release()
		return nil, err
	}
	for _, p := range stale {
		r.note("removed %s, left by a run that died", p)
	}
	return l, nil
}

func (l *runLocks) release() {
	l.out.Release()
	l.work.Release()
}
