// Command fakeringnet stands in for ringnet in the test bed's own tests. It
// keeps ringnet's command-line contract (id, up, status; exit status 2 for a
// bad config) but carries the VM's IP packets the simplest way there is: a
// TUN device, and plain unencrypted UDP to the first static peer's data
// port. It checks the bed, not the overlay.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"unsafe"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/ringnet/ringnet/node"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakeringnet id|up|status [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	configPath := fs.String("config", "", "config file")
	stateDir := fs.String("state-dir", "", "state directory")
	fs.Bool("json", true, "print JSON (always)")
	fs.Parse(os.Args[2:])
	var cfg *node.Config
	if *configPath != "" {
		var err error
		if cfg, err = node.LoadConfig(*configPath); err != nil {
			fmt.Fprintln(os.Stderr, "fakeringnet:", err)
			os.Exit(2)
		}
		*stateDir = cfg.StateDir
	}
	var err error
	switch os.Args[1] {
	case "id":
		var id peer.ID
		if id, err = identity(*stateDir); err == nil {
			fmt.Println(id)
		}
	case "status":
		err = status(*stateDir)
	case "up":
		if cfg == nil {
			fmt.Fprintln(os.Stderr, "fakeringnet: up needs --config")
			os.Exit(2)
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err = up(ctx, cfg)
		stop()
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakeringnet:", err)
		os.Exit(1)
	}
}

func identity(stateDir string) (peer.ID, error) {
	path := filepath.Join(stateDir, "fake-identity.key")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			return "", err
		}
		if data, err = crypto.MarshalPrivateKey(key); err != nil {
			return "", err
		}
		if err := os.MkdirAll(stateDir, 0o700); err != nil {
			return "", err
		}
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return "", err
		}
	} else if err != nil {
		return "", err
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return "", err
	}
	return peer.IDFromPrivateKey(key)
}

func status(stateDir string) error {
	c, err := net.Dial("unix", node.ControlSocketIn(stateDir))
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.Copy(os.Stdout, c)
	return err
}

func up(ctx context.Context, cfg *node.Config) error {
	id, err := identity(cfg.StateDir)
	if err != nil {
		return err
	}
	prefix, err := cfg.VirtualPrefix()
	if err != nil {
		return err
	}
	tun, err := openTUN(cfg.TAP.Name)
	if err != nil {
		return err
	}
	defer tun.Close()
	for _, args := range [][]string{
		{"addr", "add", prefix.String(), "dev", cfg.TAP.Name},
		{"link", "set", cfg.TAP.Name, "mtu", "1400", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	conn, err := net.ListenPacket("udp4", cfg.Listen.Data)
	if err != nil {
		return err
	}
	defer conn.Close()
	var remote *net.UDPAddr
	st := node.Status{
		PeerID:    id.String(),
		DataAddr:  cfg.Listen.Data,
		VirtualIP: prefix.Addr().String(),
		Subnet:    prefix.Masked().String(),
		TAP:       node.TAPStatus{Name: cfg.TAP.Name, MTU: 1400},
	}
	for _, p := range cfg.Peers {
		st.Peers = append(st.Peers, node.PeerStatus{PeerID: p.ID, Link: "static", Path: "udp"})
		if remote != nil {
			continue
		}
		ma, err := multiaddr.NewMultiaddr(p.Addrs[0])
		if err != nil {
			return err
		}
		ip, err := ma.ValueForProtocol(multiaddr.P_IP4)
		if err != nil {
			return err
		}
		remote = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), node.DefaultDataPort))
	}
	sock := cfg.ControlSocket()
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer ln.Close()
	statusJSON, err := json.Marshal(st)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write(statusJSON)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := tun.Read(buf)
			if err != nil {
				return
			}
			if remote != nil {
				conn.WriteTo(buf[:n], remote)
			}
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			tun.Write(buf[:n])
		}
	}()
	fmt.Fprintf(os.Stderr, "fakeringnet: up as %s on %s, peer data %v\n", id, cfg.TAP.Name, remote)
	<-ctx.Done()
	return nil
}

// openTUN creates a non-persistent TUN device without packet information:
// it goes away when the process exits.
func openTUN(name string) (*os.File, error) {
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	var req struct {
		name  [16]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], strings.TrimSpace(name))
	req.flags = syscall.IFF_TUN | syscall.IFF_NO_PI
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}
