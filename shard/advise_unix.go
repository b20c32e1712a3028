//go:build unix

package shard

import (
	"os"

	"golang.org/x/sys/unix"
)

var pageSize = int64(os.Getpagesize())

// AdviseMapped madvises the pages covering bytes [begin, end) of the
// mapping m (any read-only file mapping, not only a checkpoint's).
// DontNeed only drops whole pages inside the range so that a neighbour's
// pages are kept.
func AdviseMapped(m []byte, begin, end int64, a Advice) error { return adviseRange(m, begin, end, a) }

func adviseRange(m []byte, begin, end int64, a Advice) error {
	if a == DontNeed {
		begin = (begin + pageSize - 1) / pageSize * pageSize
	} else {
		begin = begin / pageSize * pageSize
	}
	if a == WillNeed {
		end = min(int64(len(m)), (end+pageSize-1)/pageSize*pageSize)
	} else {
		end = end / pageSize * pageSize
	}
	if end <= begin {
		return nil
	}
	adv := unix.MADV_WILLNEED
	if a == DontNeed {
		adv = unix.MADV_DONTNEED
	}
	return unix.Madvise(m[begin:end], adv)
}
