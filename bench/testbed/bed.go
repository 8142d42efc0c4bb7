// Package testbed builds a small internet out of Linux network namespaces and
// runs ringnet nodes in it, for integration tests, benchmarks and the demo.
//
// A "core" namespace is the internet's router. Each site is a router
// namespace with a WAN veth to the core and a LAN bridge, optionally behind a
// NAT; each VM is a namespace with a veth into its site's bridge. The calling
// process never enters a namespace: every command runs as a child process
// under `ip netns exec` or `ip -n`, so links are created inside their
// namespaces and nothing appears in the host's.
//
// Address plan (it exists only inside the bed's namespaces):
//
//	core <-> site i     100.64.i.1/24 (core), 100.64.i.2/24 (site WAN)
//	public site i LAN   100.96.i.0/24, router .1, routed by the core
//	NATed site i LAN    192.168.i.0/24, router .1, unknown to the core
//	VMs                 .10 and up on their site's LAN
//
// Every namespace and link name starts with the bed's run ID, so beds of
// concurrent runs never collide, and Close removes all of it.
package testbed

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Options configure a Bed. The zero value works for beds that run no nodes.
type Options struct {
	// RingnetPath is the ringnet binary; if empty, BinDir/ringnet is used.
	RingnetPath string
	BinDir      string
	// WorkDir holds each VM's config, state directory and log. If empty, a
	// fresh directory under os.TempDir() is made, and removed by Close unless
	// the test failed.
	WorkDir string
	// RunID prefixes every name the bed makes. If empty, a random one such as
	// "rb3fa1" is chosen. At most 8 characters of [a-z0-9].
	RunID string
	// Logf receives progress and, on failure, the nodes' log tails. If nil
	// and TB is set, TB.Logf is used.
	Logf func(format string, args ...any)
	// TB, if set, ties the bed to a test: Close is registered with
	// TB.Cleanup, and the node logs are dumped when the test has failed.
	TB testing.TB
}

// Bed is one run's network of namespaces and the processes in them.
type Bed struct {
	id         string
	ringnet    string
	workDir    string
	ownWorkDir bool
	logf       func(format string, args ...any)
	tb         testing.TB
	core       string

	mu         sync.Mutex
	closed     bool
	namespaces []string
	sites      []*Site
	vms        []*VM
	procs      []*Proc
	nextLink   int
}

var runIDPattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)

// New builds a bed holding only the core namespace. If opts.TB is set, the
// bed is closed when the test ends; otherwise the caller must call Close.
func New(ctx context.Context, opts Options) (*Bed, error) {
	b := &Bed{
		id:      opts.RunID,
		ringnet: opts.RingnetPath,
		workDir: opts.WorkDir,
		logf:    opts.Logf,
		tb:      opts.TB,
	}
	if b.id == "" {
		var r [2]byte
		if _, err := rand.Read(r[:]); err != nil {
			return nil, fmt.Errorf("run id: %w", err)
		}
		b.id = "rb" + hex.EncodeToString(r[:])
	}
	if !runIDPattern.MatchString(b.id) {
		return nil, fmt.Errorf("run id %q: want 1 to 8 of [a-z0-9], starting with a letter", b.id)
	}
	if b.ringnet == "" && opts.BinDir != "" {
		b.ringnet = filepath.Join(opts.BinDir, "ringnet")
	}
	if b.logf == nil {
		if b.tb != nil {
			b.logf = b.tb.Logf
		} else {
			b.logf = func(string, ...any) {}
		}
	}
	if b.workDir == "" {
		// Short on purpose: a unix socket path must fit in 108 bytes.
		dir, err := os.MkdirTemp("", b.id+"-")
		if err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
		b.workDir, b.ownWorkDir = dir, true
	} else if err := os.MkdirAll(b.workDir, 0o755); err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	if b.tb != nil {
		b.tb.Cleanup(func() {
			if err := b.Close(); err != nil {
				b.tb.Errorf("close test bed: %v", err)
			}
		})
	}
	b.core = b.id + "-core"
	if err := b.addNamespace(ctx, b.core, true); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// RunID is the prefix of every name the bed makes.
func (b *Bed) RunID() string { return b.id }

// WorkDir holds the VMs' configs, state directories and logs.
func (b *Bed) WorkDir() string { return b.workDir }

// RingnetPath is the ringnet binary the bed runs.
func (b *Bed) RingnetPath() string { return b.ringnet }

// Core is the name of the core router's namespace.
func (b *Bed) Core() string { return b.core }

// Namespaces lists the namespaces the bed made, in order.
func (b *Bed) Namespaces() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.namespaces)
}

// Site returns the site of that name, or nil.
func (b *Bed) Site(name string) *Site {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.sites {
		if s.name == name {
			return s
		}
	}
	return nil
}

// VMs lists the bed's VMs in the order they were added.
func (b *Bed) VMs() []*VM {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.vms)
}

// Close stops every node and process, deletes every namespace (which deletes
// their links) and removes the work directory it made. It is safe to call
// more than once; later calls do nothing.
func (b *Bed) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	vms, procs, namespaces := slices.Clone(b.vms), slices.Clone(b.procs), slices.Clone(b.namespaces)
	b.mu.Unlock()

	failed := b.tb != nil && b.tb.Failed()
	if failed {
		b.DumpLogs(60)
	}
	// Nodes first and gently, so they get to remove their TAP devices;
	// then whatever else still runs.
	for _, vm := range vms {
		if p := vm.nodeProc(); p != nil {
			p.Stop(syscall.SIGTERM, 3*time.Second)
		}
	}
	for _, p := range procs {
		p.Stop(syscall.SIGTERM, time.Second)
	}
	var errs []error
	for _, ns := range slices.Backward(namespaces) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if pids, err := run(ctx, "", "ip", "netns", "pids", ns); err == nil {
			for _, pid := range strings.Fields(string(pids)) {
				run(ctx, "", "kill", "-KILL", pid)
			}
		}
		if _, err := run(ctx, "", "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	if b.ownWorkDir {
		if failed {
			b.logf("testbed: kept work dir %s", b.workDir)
		} else if err := os.RemoveAll(b.workDir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DumpLogs writes the last lines of every VM's node log through Logf.
func (b *Bed) DumpLogs(lines int) {
	for _, vm := range b.VMs() {
		tail, err := tailFile(vm.LogPath(), lines)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			b.logf("testbed: %s: %v", vm.name, err)
			continue
		}
		b.logf("testbed: last %d lines of %s:\n%s", lines, vm.LogPath(), tail)
	}
}

func (b *Bed) checkOpen() error {
	if b.closed {
		return errors.New("test bed is closed")
	}
	return nil
}

// addNamespace creates a namespace, brings up its loopback and, for
// routers, turns on forwarding.
func (b *Bed) addNamespace(ctx context.Context, name string, router bool) error {
	b.mu.Lock()
	if err := b.checkOpen(); err != nil {
		b.mu.Unlock()
		return err
	}
	if slices.Contains(b.namespaces, name) {
		b.mu.Unlock()
		return fmt.Errorf("namespace %s exists already", name)
	}
	b.mu.Unlock()
	if _, err := run(ctx, "", "ip", "netns", "add", name); err != nil {
		return err
	}
	b.mu.Lock()
	b.namespaces = append(b.namespaces, name)
	b.mu.Unlock()
	if _, err := run(ctx, "", "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	if router {
		if _, err := run(ctx, "", "ip", "netns", "exec", name, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
			return err
		}
	}
	return nil
}

// linkNames returns a fresh pair of link names: one end, the other end.
func (b *Bed) linkNames(kind string) (string, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nextLink++
	// "rb3fa1-u12": at most 8+2+5 characters, within IFNAMSIZ.
	return fmt.Sprintf("%s-%s%d", b.id, kind[:1], b.nextLink), fmt.Sprintf("%s-%s%d", b.id, kind[1:], b.nextLink)
}

// run runs a command and returns its stdout. The error carries the command
// and its stderr.
func run(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const maxRead = 256 << 10
	if st, err := f.Stat(); err == nil && st.Size() > maxRead {
		if _, err := f.Seek(-maxRead, io.SeekEnd); err != nil {
			return "", err
		}
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return "", err
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), nil
}
