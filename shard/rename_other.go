//go:build !linux

package shard

func renameNoReplace(oldpath, newpath string) error { return renameChecked(oldpath, newpath) }
