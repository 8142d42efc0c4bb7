package testbed

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestNATCleanupAndClose(t *testing.T) {
	bed := NewT(t, Options{})
	ctx := t.Context()
	natSite := mustSite(t, bed, "home", NATCone)
	pubSite := mustSite(t, bed, "dc", NATNone)
	home := mustVM(t, bed, natSite, "home1")
	dc := mustVM(t, bed, pubSite, "dc1")

	if !natSite.LAN().Contains(home.UnderlayIP()) || !home.UnderlayIP().IsPrivate() {
		t.Errorf("NATed VM's address %v: want a private address in %v", home.UnderlayIP(), natSite.LAN())
	}
	// Count at the public VM which source address the pings come from.
	countFrom(t, dc, natSite.WANIP())
	if r, err := home.Ping(ctx, dc.UnderlayIP().String(), "-c", "2", "-W", "1"); err != nil || r.Received != 2 {
		t.Fatalf("ping from the NATed VM to the public VM: %+v, %v", r, err)
	}
	if n := counted(t, dc); n != 2 {
		t.Errorf("public VM saw %d echo requests from the NAT's address %v, want 2", n, natSite.WANIP())
	}
	if r, err := dc.Ping(ctx, home.UnderlayIP().String(), "-c", "1", "-W", "1"); err == nil && r.Received != 0 {
		t.Errorf("ping from the public VM into the NATed LAN got through: %+v", r)
	}

	id := bed.RunID()
	if err := bed.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := bed.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), id+"-") {
		t.Errorf("namespaces of run %s remain after Close:\n%s", id, out)
	}
	out, err = exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), id+"-") {
		t.Errorf("links of run %s remain after Close:\n%s", id, out)
	}
	if _, err := bed.AddSite(ctx, "late", NATNone); err == nil {
		t.Error("AddSite after Close succeeded")
	}
}

func TestUDPBlockedSite(t *testing.T) {
	bed := NewT(t, Options{})
	ctx := t.Context()
	blocked := mustVM(t, bed, mustSite(t, bed, "cafe", NATUDPBlocked), "cafe1")
	cone := mustVM(t, bed, mustSite(t, bed, "home", NATCone), "home1")
	dc := mustVM(t, bed, mustSite(t, bed, "dc", NATNone), "dc1")

	rules := `table inet udpcount {
	counter seen {}
	chain input { type filter hook input priority 0; udp dport 9999 counter name "seen"; }
}`
	if _, err := run(ctx, rules, "ip", "netns", "exec", dc.Namespace(), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	seen := func() uint64 {
		out, err := dc.Output(ctx, "nft", "-j", "list", "counters", "table", "inet", "udpcount")
		if err != nil {
			t.Fatal(err)
		}
		c, err := parseNftCounters(out)
		if err != nil {
			t.Fatal(err)
		}
		return c["seen"]
	}
	send := fmt.Sprintf("echo hello > /dev/udp/%v/9999", dc.UnderlayIP())
	for _, vm := range []*VM{blocked, cone} {
		before := seen()
		if err := vm.Exec(ctx, "bash", "-c", send); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		got := seen() - before
		if want := uint64(map[*VM]int{blocked: 0, cone: 1}[vm]); got != want {
			t.Errorf("UDP datagrams from %s (%v NAT) seen: %d, want %d", vm.Name(), vm.Site().NAT(), got, want)
		}
	}
	if r, err := blocked.Ping(ctx, dc.UnderlayIP().String(), "-c", "1", "-W", "1"); err != nil || r.Received != 1 {
		t.Errorf("ping from the UDP-blocked site: %+v, %v", r, err)
	}
}

func TestLossAndMove(t *testing.T) {
	bed := NewT(t, Options{})
	ctx := t.Context()
	east := mustSite(t, bed, "east", NATNone)
	west := mustSite(t, bed, "west", NATNone)
	north := mustSite(t, bed, "north", NATCone)
	mover := mustVM(t, bed, east, "mover")
	peer := mustVM(t, bed, west, "peer")

	if err := bed.SetLoss(ctx, mover, 0.1); err != nil {
		t.Fatal(err)
	}
	features, err := mover.Output(ctx, "ethtool", "-k", mover.Uplink())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tcp-segmentation-offload: off", "generic-segmentation-offload: off", "generic-receive-offload: off", "tx-udp-segmentation: off"} {
		if !strings.Contains(string(features), f) {
			t.Errorf("uplink with loss: want %q in ethtool -k", f)
		}
	}
	if _, err := peer.Ping(ctx, mover.UnderlayIP().String(), "-c", "400", "-i", "0.002", "-W", "1"); err != nil {
		t.Fatal(err)
	}
	dropped, total, share, err := bed.MeasuredLoss(ctx, mover)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("loss 10%%: dropped %d of %d packets (%.1f%%)", dropped, total, 100*share)
	if total < 700 || share < 0.06 || share > 0.14 {
		t.Errorf("measured loss %d of %d (%.3f): want about 0.1 of about 760 packets", dropped, total, share)
	}

	oldUplink, oldIP := mover.Uplink(), mover.UnderlayIP()
	if err := bed.MoveVM(ctx, mover, north); err != nil {
		t.Fatal(err)
	}
	if mover.Site() != north || !north.LAN().Contains(mover.UnderlayIP()) {
		t.Errorf("after the move: site %s, address %v; want north, in %v", mover.Site().Name(), mover.UnderlayIP(), north.LAN())
	}
	if err := mover.Exec(ctx, "ip", "link", "show", oldUplink); err == nil {
		t.Errorf("old uplink %s still exists after the move", oldUplink)
	}
	if r, err := peer.Ping(ctx, oldIP.String(), "-c", "1", "-W", "1"); err == nil && r.Received != 0 {
		t.Errorf("the old address %v still answers after the move", oldIP)
	}
	// From behind the NAT now, with the loss still applied.
	r, err := mover.Ping(ctx, peer.UnderlayIP().String(), "-c", "100", "-i", "0.002", "-W", "1")
	if err != nil || r.Received == 0 {
		t.Fatalf("ping from the moved VM: %+v, %v", r, err)
	}
	_, total2, share2, err := bed.MeasuredLoss(ctx, mover)
	if err != nil {
		t.Fatal(err)
	}
	if total2 < total+150 || share2 < 0.05 || share2 > 0.15 {
		t.Errorf("after the move: %d packets, share %.3f; want over %d packets at about 0.1", total2, share2, total+150)
	}
}

func TestProcStop(t *testing.T) {
	bed := NewT(t, Options{})
	vm := mustVM(t, bed, mustSite(t, bed, "dc", NATNone), "dc1")
	p, err := vm.Start("sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Stop(9, time.Second); err != nil {
		t.Errorf("stop with SIGKILL: %v", err)
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Errorf("stop took %v", d)
	}
	if exited, _ := p.Exited(); !exited {
		t.Error("process still running after Stop")
	}
	if err := vm.StartNode(t.Context(), nodeConfigForTest()); err == nil {
		t.Error("StartNode without a ringnet binary succeeded")
	}
}

func mustSite(t *testing.T, bed *Bed, name string, nat NATKind) *Site {
	t.Helper()
	s, err := bed.AddSite(t.Context(), name, nat)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustVM(t *testing.T, bed *Bed, site *Site, name string) *VM {
	t.Helper()
	vm, err := bed.AddVM(t.Context(), site, name)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// countFrom makes vm count the echo requests it receives from src.
func countFrom(t *testing.T, vm *VM, src netip.Addr) {
	t.Helper()
	rules := fmt.Sprintf(`table ip echocount {
	counter seen {}
	chain input { type filter hook input priority 0; ip saddr %v icmp type echo-request counter name "seen"; }
}`, src)
	if _, err := run(context.Background(), rules, "ip", "netns", "exec", vm.Namespace(), "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

func counted(t *testing.T, vm *VM) uint64 {
	t.Helper()
	out, err := vm.Output(t.Context(), "nft", "-j", "list", "counters", "table", "ip", "echocount")
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseNftCounters(out)
	if err != nil {
		t.Fatal(err)
	}
	return c["seen"]
}
