package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/ringnet/ringnet/dhcp"
)

// leaseWatcher is what notifySystemd needs of a node.
type leaseWatcher interface {
	LeaseWatch() (l dhcp.Lease, ok bool, changed <-chan struct{})
}

// notifySystemd speaks the sd_notify protocol when systemd started the node
// as a Type=notify unit: READY=1 once the VM's address is held, so that the
// image's DHCP client and whatever needs the virtual network (units ordered
// after ringnet.service or network-online.target) get an answer on their
// first try; and a STATUS= line that follows the lease. Without
// NOTIFY_SOCKET it returns at once.
func notifySystemd(done <-chan struct{}, n leaseWatcher, log *slog.Logger) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	notify := func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Warn("systemd notify", "err", err)
		}
	}
	notify("STATUS=joining the ring and claiming an address")
	ready := false
	for {
		l, ok, changed := n.LeaseWatch()
		switch {
		case ok && !ready:
			ready = true
			notify(fmt.Sprintf("READY=1\nSTATUS=holding %v", l.IP))
		case ok:
			notify(fmt.Sprintf("STATUS=holding %v", l.IP))
		case ready:
			notify("STATUS=lost the address; claiming again")
		}
		select {
		case <-done:
			notify("STOPPING=1")
			return
		case <-changed:
		}
	}
}
