//go:build linux && amd64

package kernels

import "syscall"

// amxPermit asks Linux for the AMX tile data state (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): since 5.16 a process must
// request it before its first tile instruction, which would otherwise fault.
// The grant covers every thread of the process. Go's signal stacks (32 KiB)
// hold the 11 KiB of extended state a signal frame then carries.
func amxPermit() bool {
	const archReqXcompPerm, xfeatureXTileData = 0x1023, 18
	_, _, errno := syscall.RawSyscall(syscall.SYS_ARCH_PRCTL, archReqXcompPerm, xfeatureXTileData, 0)
	return errno == 0
}
