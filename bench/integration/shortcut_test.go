package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ringnet/ringnet/node"
)

// peerView is what a's node reports about b: its ring link's kinds (""
// for none) and the session's path and hops.
func peerView(t *testing.T, a, b *ringVM) (kinds string, p node.PeerStatus) {
	t.Helper()
	st, err := a.vm.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range st.Ring.Links {
		if l.PeerID == b.id {
			kinds = l.Kinds
		}
	}
	for _, ps := range st.Peers {
		if ps.PeerID == b.id {
			p = ps
		}
	}
	return kinds, p
}

// TestShortcutFormsAndIdlesOut starts a flow between two VMs whose nodes
// have no link of their own: it begins on a multi-hop ring path, a
// shortcut forms and the flow moves to it; idle, the shortcut goes; when
// traffic resumes it forms again.
func TestShortcutFormsAndIdlesOut(t *testing.T) {
	bed, vms := newRingBed(t, 10, 2)
	defer func() {
		if t.Failed() {
			bed.DumpLogs(20)
		}
	}()
	base := node.Config{Shortcuts: node.ShortcutConfig{IdleTimeout: "5s"}}
	startRing(t, base, vms)
	waitRingConsistent(t, vms, 60*time.Second)

	// A pair that the ring links only over several hops.
	var a, b *ringVM
	for _, x := range vms {
		st, err := x.vm.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, y := range vms {
			if y != x && !slices.ContainsFunc(st.Ring.Links, func(l node.RingLink) bool { return l.PeerID == y.id }) {
				a, b = x, y
			}
		}
	}
	if a == nil {
		t.Fatal("every node links to every other: no multi-hop pair")
	}
	ctx := t.Context()
	if err := a.vm.WaitReachable(ctx, b.vip); err != nil {
		t.Fatal(err)
	}
	if _, p := peerView(t, a, b); p.Link != "routed" || p.Hops < 2 {
		t.Fatalf("before any traffic, %s reaches %s by %s with %d hops; want routed, at least 2", a.vip, b.vip, p.Link, p.Hops)
	}

	flow := func() {
		t.Helper()
		// 20 packets a second for 3 s: past the threshold in about a second.
		if r, err := a.vm.Ping(ctx, b.vip, "-i", "0.05", "-c", "60", "-W", "1"); err != nil || r.Received < 55 {
			t.Fatalf("flow: %+v %v", r, err)
		}
	}
	flow()
	waitFor(t, "a shortcut that carries the flow", func() bool {
		kinds, p := peerView(t, a, b)
		return strings.Contains(kinds, "shortcut") && p.Hops == 1 && (p.Path == "udp" || p.Path == "stream")
	})
	st, err := a.vm.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("shortcut %s -> %s formed: %d formed, time from the flow's first packet to the direct path %d ms",
		a.vip, b.vip, st.Ring.Counters["shortcuts_formed"], st.Ring.Counters["time_to_direct_ms"])

	deadline := time.Now().Add(20 * time.Second)
	for {
		kinds, p := peerView(t, a, b)
		if !strings.Contains(kinds, "shortcut") {
			break
		}
		if time.Now().After(deadline) {
			st, _ := a.vm.Status(ctx)
			t.Fatalf("the idle shortcut was not dropped: kinds %s, peer %+v, counters %v", kinds, p, st.Ring.Counters)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st, _ = a.vm.Status(ctx)
	if st.Ring.Counters["shortcuts_dropped"] < 1 {
		t.Fatalf("no shortcut counted as dropped: %v", st.Ring.Counters)
	}
	formed := st.Ring.Counters["shortcuts_formed"]
	flow()
	waitFor(t, "the shortcut to form again", func() bool {
		st, err := a.vm.Status(ctx)
		return err == nil && st.Ring.Counters["shortcuts_formed"] > formed
	})
	t.Logf("idle shortcut dropped after 5 s, and formed again when traffic resumed")
}
