package main

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringnet/ringnet/dhcp"
)

// fakeLeases is a leaseWatcher whose lease the test sets.
type fakeLeases struct {
	mu      sync.Mutex
	cur     dhcp.Lease
	changed chan struct{}
}

func (w *fakeLeases) LeaseWatch() (dhcp.Lease, bool, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.changed == nil {
		w.changed = make(chan struct{})
	}
	return w.cur, w.cur.IP.IsValid(), w.changed
}

func (w *fakeLeases) set(ip netip.Addr) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cur = dhcp.Lease{IP: ip}
	if w.changed != nil {
		close(w.changed)
		w.changed = nil
	}
}

// TestNotifySystemd listens on a notify socket as systemd does and checks
// that READY=1 comes only once the VM's address is held, and STOPPING=1
// at the end.
func TestNotifySystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)

	w := &fakeLeases{}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		notifySystemd(done, w, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	read := func() string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:n])
	}
	if got, want := read(), "STATUS=joining the ring and claiming an address"; got != want {
		t.Fatalf("first message %q, want %q", got, want)
	}
	w.set(netip.MustParseAddr("10.128.0.7"))
	if got, want := read(), "READY=1\nSTATUS=holding 10.128.0.7"; got != want {
		t.Fatalf("after the lease: %q, want %q", got, want)
	}
	w.set(netip.Addr{})
	if got, want := read(), "STATUS=lost the address; claiming again"; got != want {
		t.Fatalf("after losing it: %q, want %q", got, want)
	}
	w.set(netip.MustParseAddr("10.128.0.8"))
	if got, want := read(), "STATUS=holding 10.128.0.8"; got != want {
		t.Fatalf("after a new lease: %q, want %q (READY only once)", got, want)
	}
	close(done)
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("at the end: %q, want STOPPING=1", got)
	}
	<-finished
}

// TestNotifySystemdWithoutSystemd returns at once when no service manager
// listens.
func TestNotifySystemdWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		notifySystemd(make(chan struct{}), &fakeLeases{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		t.Fatal("notifySystemd waited without NOTIFY_SOCKET")
	}
}
