package node

import "testing"

func TestMemoryStatusAccountsForTheRuntime(t *testing.T) {
	keep := make([]byte, 8<<20) // 8 MiB the heap must show
	m := memoryStatus()
	if m.HeapLive < uint64(len(keep)) {
		t.Errorf("heap live %d bytes, less than the %d held", m.HeapLive, len(keep))
	}
	if m.Stacks == 0 || m.Runtime == 0 || m.Goroutines == 0 {
		t.Errorf("empty classes: %+v", m)
	}
	if sum := m.HeapLive + m.HeapFree + m.HeapReleased + m.HeapUnused + m.Stacks + m.Runtime; sum != m.Total {
		t.Errorf("classes sum to %d, total %d", sum, m.Total)
	}
	keep[0] = 1
}
