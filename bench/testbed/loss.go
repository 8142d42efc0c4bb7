package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
)

// Loss is applied where packets travel one at a time: at the ingress hook of
// each end of the VM's uplink (the VM's end for arriving packets, the site's
// end for leaving ones), with segmentation offloads off on both ends. An
// output hook would see a whole UDP_SEGMENT or TSO batch as one packet and
// drop forty segments at once.

type lossState struct {
	perMille     int
	dropped, all uint64 // counted on uplinks the VM has left
}

const vmLossTable = "testbed_loss"

func siteLossTable(port string) string {
	return "testbed_loss_" + strings.ReplaceAll(port, "-", "_")
}

// SetLoss drops share (0 to 1, in steps of 0.001) of the IPv4 packets on
// vm's uplink, in each direction at random, and counts them; the counts
// start again from zero. SetLoss(ctx, vm, 0) keeps counting without drops.
func (b *Bed) SetLoss(ctx context.Context, vm *VM, share float64) error {
	if share < 0 || share > 1 {
		return fmt.Errorf("loss share %v is outside 0..1", share)
	}
	vm.mu.Lock()
	vm.loss = &lossState{perMille: int(math.Round(share * 1000))}
	vm.mu.Unlock()
	if err := b.applyLoss(ctx, vm); err != nil {
		return fmt.Errorf("set loss on %s: %w", vm.name, err)
	}
	return nil
}

// MeasuredLoss returns the packets SetLoss's rules saw on vm's uplinks since
// the last SetLoss, and how many of them they dropped.
func (b *Bed) MeasuredLoss(ctx context.Context, vm *VM) (dropped, total uint64, share float64, err error) {
	vm.mu.Lock()
	loss, site, port := vm.loss, vm.site, vm.port
	if loss != nil {
		dropped, total = loss.dropped, loss.all
	}
	vm.mu.Unlock()
	if loss == nil {
		return 0, 0, 0, fmt.Errorf("measured loss on %s: SetLoss was not called", vm.name)
	}
	for _, t := range []struct{ ns, table string }{{vm.ns, vmLossTable}, {site.ns, siteLossTable(port)}} {
		d, n, err := readLossCounters(ctx, t.ns, t.table)
		if err != nil {
			return 0, 0, 0, fmt.Errorf("measured loss on %s: %w", vm.name, err)
		}
		dropped += d
		total += n
	}
	if total > 0 {
		share = float64(dropped) / float64(total)
	}
	return dropped, total, share, nil
}

// moveLoss carries vm's loss over from its old uplink to its new one.
func (b *Bed) moveLoss(ctx context.Context, vm *VM, oldSite *Site, oldPort string) error {
	vm.mu.Lock()
	loss := vm.loss
	vm.mu.Unlock()
	for _, t := range []struct{ ns, table string }{{vm.ns, vmLossTable}, {oldSite.ns, siteLossTable(oldPort)}} {
		d, n, err := readLossCounters(ctx, t.ns, t.table)
		if err != nil {
			return err
		}
		vm.mu.Lock()
		loss.dropped += d
		loss.all += n
		vm.mu.Unlock()
	}
	if _, err := run(ctx, "", "ip", "netns", "exec", oldSite.ns, "nft", "delete", "table", "netdev", siteLossTable(oldPort)); err != nil {
		return err
	}
	return b.applyLoss(ctx, vm)
}

func (b *Bed) applyLoss(ctx context.Context, vm *VM) error {
	vm.mu.Lock()
	perMille, site, uplink, port := vm.loss.perMille, vm.site, vm.uplink, vm.port
	vm.mu.Unlock()
	for _, end := range []struct{ ns, dev, table string }{
		{vm.ns, uplink, vmLossTable},
		{site.ns, port, siteLossTable(port)},
	} {
		if _, err := run(ctx, "", "ip", "netns", "exec", end.ns, "ethtool", "-K", end.dev,
			"tso", "off", "gso", "off", "gro", "off", "tx-udp-segmentation", "off"); err != nil {
			return err
		}
		if _, err := run(ctx, lossRules(end.table, end.dev, perMille), "ip", "netns", "exec", end.ns, "nft", "-f", "-"); err != nil {
			return err
		}
	}
	return nil
}

// lossRules replaces table with one that counts the IPv4 packets arriving on
// dev and drops perMille of every thousand of them.
func lossRules(table, dev string, perMille int) string {
	drop := ""
	if perMille > 0 {
		drop = fmt.Sprintf(`meta protocol ip numgen random mod 1000 < %d counter name "dropped" drop`, perMille)
	}
	return fmt.Sprintf(`table netdev %[1]s {}
delete table netdev %[1]s
table netdev %[1]s {
	counter total {}
	counter dropped {}
	chain ingress {
		type filter hook ingress device %[2]q priority -500; policy accept;
		meta protocol ip counter name "total"
		%[3]s
	}
}
`, table, dev, drop)
}

func readLossCounters(ctx context.Context, ns, table string) (dropped, total uint64, err error) {
	out, err := run(ctx, "", "ip", "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "netdev", table)
	if err != nil {
		return 0, 0, err
	}
	counters, err := parseNftCounters(out)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: nft counters of %s: %w", ns, table, err)
	}
	return counters["dropped"], counters["total"], nil
}

// parseNftCounters returns the packet count of each named counter in the
// output of `nft -j list counters`.
func parseNftCounters(data []byte) (map[string]uint64, error) {
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	counters := make(map[string]uint64)
	for _, obj := range doc.Nftables {
		if obj.Counter != nil {
			counters[obj.Counter.Name] = obj.Counter.Packets
		}
	}
	return counters, nil
}
