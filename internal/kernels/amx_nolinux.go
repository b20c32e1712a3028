//go:build amd64 && !linux

package kernels

// amxPermit: the tile state is only requested (and tested) on Linux.
func amxPermit() bool { return false }
