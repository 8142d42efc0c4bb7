package node

import "runtime/metrics"

// MemoryStatus is the Go runtime's account of the node's memory, so that
// an operator can tell what its resident set is made of: the binary's own
// pages (not counted here), the heap, goroutine stacks and the runtime's
// bookkeeping. Sizes are in bytes.
type MemoryStatus struct {
	// HeapLive is the heap that objects occupy, garbage not yet swept
	// included.
	HeapLive uint64 `json:"heap_live"`
	// HeapFree is heap the runtime holds free and has not yet given back
	// to the kernel; HeapReleased what it gave back (not resident).
	HeapFree     uint64 `json:"heap_free"`
	HeapReleased uint64 `json:"heap_released"`
	// HeapUnused is space in spans in use that no object fills.
	HeapUnused uint64 `json:"heap_unused"`
	Stacks     uint64 `json:"stacks"`
	// Runtime is the runtime's own metadata (spans, GC, profiling) and
	// other mappings.
	Runtime uint64 `json:"runtime"`
	// Total is all the memory the runtime mapped, released heap included.
	Total      uint64 `json:"total"`
	Goroutines uint64 `json:"goroutines"`
}

// memoryStatus reads the runtime's memory classes.
func memoryStatus() MemoryStatus {
	names := [...]string{
		"/memory/classes/heap/objects:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/stacks:bytes",
		"/memory/classes/os-stacks:bytes",
		"/memory/classes/metadata/other:bytes",
		"/memory/classes/metadata/mspan/inuse:bytes",
		"/memory/classes/metadata/mspan/free:bytes",
		"/memory/classes/metadata/mcache/inuse:bytes",
		"/memory/classes/metadata/mcache/free:bytes",
		"/memory/classes/profiling/buckets:bytes",
		"/memory/classes/other:bytes",
		"/memory/classes/total:bytes",
		"/sched/goroutines:goroutines",
	}
	samples := make([]metrics.Sample, len(names))
	for i, name := range names {
		samples[i].Name = name
	}
	metrics.Read(samples)
	v := make(map[string]uint64, len(samples))
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[s.Name] = s.Value.Uint64()
		}
	}
	return MemoryStatus{
		HeapLive:     v["/memory/classes/heap/objects:bytes"],
		HeapFree:     v["/memory/classes/heap/free:bytes"],
		HeapReleased: v["/memory/classes/heap/released:bytes"],
		HeapUnused:   v["/memory/classes/heap/unused:bytes"],
		Stacks:       v["/memory/classes/heap/stacks:bytes"] + v["/memory/classes/os-stacks:bytes"],
		Runtime: v["/memory/classes/metadata/other:bytes"] + v["/memory/classes/metadata/mspan/inuse:bytes"] +
			v["/memory/classes/metadata/mspan/free:bytes"] + v["/memory/classes/metadata/mcache/inuse:bytes"] +
			v["/memory/classes/metadata/mcache/free:bytes"] + v["/memory/classes/profiling/buckets:bytes"] +
			v["/memory/classes/other:bytes"],
		Total:      v["/memory/classes/total:bytes"],
		Goroutines: v["/sched/goroutines:goroutines"],
	}
}
