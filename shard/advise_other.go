//go:build !unix

package shard

func adviseRange(m []byte, begin, end int64, a Advice) error { return nil }

// AdviseMapped madvises the pages of a mapping (a no-op here).
func AdviseMapped(m []byte, begin, end int64, a Advice) error { return nil }
