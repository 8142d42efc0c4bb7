package integration

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ringnet/ringnet/bench/testbed"
	"github.com/ringnet/ringnet/node"
)

// TestReplayedAndTamperedDatagramsAreDropped replays and alters a share of
// the sealed datagrams a sends to b, with nftables in a's namespace, and
// checks that b drops and counts exactly those while pings still work.
func TestReplayedAndTamperedDatagramsAreDropped(t *testing.T) {
	p := newPair(t)
	p.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	// A link starts on the stream and moves to UDP at its first round
	// trip; what follows counts UDP datagrams.
	waitPath(t, ctx, "udp", p.a, p.b)

	// Only datagrams longer than 300 bytes: the pings below, not the
	// links' own small keepalives.
	flow := fmt.Sprintf("udp dport %d meta length > 300", node.DefaultDataPort)
	toB := fmt.Sprintf("ip daddr %s %s", p.b.UnderlayIP(), flow)
	nft := func(vm *testbed.VM, hook string, rules ...string) {
		t.Helper()
		script := "add table ip rntest\nflush table ip rntest\n" +
			"add chain ip rntest c { type filter hook " + hook + " priority 0; }\n"
		for _, r := range rules {
			script += "add rule ip rntest c " + r + "\n"
		}
		cmd := vm.Command(ctx, "nft", "-f", "-")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
	}

	// Replay: a copy of some datagrams goes to the site router and on to
	// b. Each ping is one datagram, so what b receives beyond the pings
	// sent are the copies.
	nft(p.a, "output", toB+" numgen random mod 4 == 0 dup to "+p.a.Site().Gateway().String())
	nft(p.b, "input", fmt.Sprintf("ip saddr %s %s counter", p.a.UnderlayIP(), flow))
	r, err := p.a.Ping(ctx, vipB, "-c", "100", "-i", "0.01", "-s", "500", "-W", "2")
	if err != nil {
		t.Fatal(err)
	}
	sent := uint64(r.Transmitted)
	arrived := nftPackets(t, ctx, p.b)[0]
	drops := dropsOf(t, ctx, p.b)
	t.Logf("replay: %d of 100 pings answered; a sent %d datagrams, b received %d; b counted %d replayed",
		r.Received, sent, arrived, drops["replayed"])
	if arrived <= sent {
		t.Fatal("no copy reached b: the test did not test")
	}
	if drops["replayed"] != arrived-sent {
		t.Errorf("b counted %d replayed datagrams, but %d copies arrived", drops["replayed"], arrived-sent)
	}
	if r.Received != 100 {
		t.Errorf("%d of 100 pings answered while datagrams were replayed", r.Received)
	}

	// Tamper: overwrite one byte of ciphertext (UDP header 8 + overlay
	// header 16, so byte 32 of the transport payload is sealed data).
	nft(p.a, "output", toB+" numgen random mod 4 == 0 counter @th,256,8 set 0x55")
	r, err = p.a.Ping(ctx, vipB, "-c", "100", "-i", "0.01", "-s", "500", "-W", "1")
	if err != nil {
		t.Fatal(err)
	}
	altered := nftPackets(t, ctx, p.a)[0]
	after := dropsOf(t, ctx, p.b)
	authFailed := after["auth_failed"] - drops["auth_failed"]
	t.Logf("tamper: %d of 100 pings answered; nft altered %d datagrams; b counted %d failing authentication", r.Received, altered, authFailed)
	if altered == 0 {
		t.Fatal("nftables altered nothing: the test did not test")
	}
	// A byte that already was 0x55 is not altered; allow for that.
	if authFailed == 0 || authFailed > altered {
		t.Errorf("b counted %d datagrams failing authentication, nftables altered %d", authFailed, altered)
	}
	if lost := uint64(100 - r.Received); lost < authFailed {
		t.Errorf("only %d pings lost, but %d altered datagrams failed authentication: some were delivered?", lost, authFailed)
	}
}

// waitPath waits until each VM's node has its one peer on path.
func waitPath(t *testing.T, ctx context.Context, path string, vms ...*testbed.VM) {
	t.Helper()
	for _, vm := range vms {
		waitFor(t, vm.Name()+"'s link on "+path, func() bool {
			st, err := vm.Status(ctx)
			return err == nil && len(st.Peers) == 1 && st.Peers[0].Path == path
		})
	}
}

var nftPacketsRE = regexp.MustCompile(`counter packets (\d+)`)

// nftPackets reads the packet counters of the test's nftables rules, in
// order.
func nftPackets(t *testing.T, ctx context.Context, vm *testbed.VM) []uint64 {
	t.Helper()
	out, err := vm.Output(ctx, "nft", "list", "table", "ip", "rntest")
	if err != nil {
		t.Fatal(err)
	}
	var counts []uint64
	for _, m := range nftPacketsRE.FindAllSubmatch(out, -1) {
		n, _ := strconv.ParseUint(string(m[1]), 10, 64)
		counts = append(counts, n)
	}
	if len(counts) == 0 {
		t.Fatalf("no counter in:\n%s", out)
	}
	return counts
}

func dropsOf(t *testing.T, ctx context.Context, vm *testbed.VM) map[string]uint64 {
	t.Helper()
	st, err := vm.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Drops
}

// TestStreamFallbackWhenUDPIsBlocked puts a behind a site that drops all
// UDP: the link must carry packets over the libp2p stream (TCP) instead.
func TestStreamFallbackWhenUDPIsBlocked(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	_, a, b := aDialsB(t, ctx, testbed.NATUDPBlocked)
	r, err := a.Ping(ctx, vipB, "-c", "20", "-i", "0.05", "-W", "2")
	if err != nil {
		t.Fatal(err)
	}
	if r.Received != 20 {
		t.Errorf("%d of 20 pings answered over the stream fallback", r.Received)
	}
	if res := iperf(t, ctx, a, b, vipB, "-t", "2"); res.Bytes == 0 {
		t.Error("iperf3 over the stream fallback moved no data")
	}
	for _, vm := range []*testbed.VM{a, b} {
		st, err := vm.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 1 || st.Peers[0].Path != "stream" {
			t.Errorf("%s: peers %+v, want one on path stream", vm.Name(), st.Peers)
		}
	}
}

// TestLinkFallsBackWhenUDPDiesMidFlow blocks UDP between two linked VMs
// while a sends to b: within seconds the link must move to the stream
// fallback and the pings get through again.
func TestLinkFallsBackWhenUDPDiesMidFlow(t *testing.T) {
	p := newPair(t)
	p.start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	waitPath(t, ctx, "udp", p.a, p.b)
	block := "add table inet rnblock\n" +
		"add chain inet rnblock c { type filter hook output priority 0; }\n" +
		fmt.Sprintf("add rule inet rnblock c udp dport %d drop\n", node.DefaultDataPort)
	cmd := p.a.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(block)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	blocked := time.Now()
	// Keep sending: the link notices that it sends without hearing back.
	pinger, err := p.a.Start("ping", "-i", "0.1", "-c", "200", vipB)
	if err != nil {
		t.Fatal(err)
	}
	defer pinger.Stop(syscall.SIGKILL, time.Second)
	waitPath(t, ctx, "stream", p.a)
	t.Logf("a's link moved to the stream %v after UDP was blocked", time.Since(blocked).Round(100*time.Millisecond))
	// b's answers still reach a over UDP, but that proves nothing about
	// a's way to b: a must stay on the stream, and lose nothing.
	r, err := p.a.Ping(ctx, vipB, "-c", "10", "-i", "0.1", "-W", "2")
	if err != nil || r.Received != 10 {
		t.Errorf("pings over the fallback: %+v, %v", r, err)
	}
	st, err := p.a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].Path != "stream" {
		t.Errorf("a's link went back to %q with UDP still blocked", st.Peers[0].Path)
	}
}
