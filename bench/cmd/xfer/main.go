// Command xfer moves a file over one TCP connection and reports the
// SHA-256 of what went out and of what came in, so that the integration
// tests can check a transfer through the overlay byte for byte. It runs
// inside a VM (a network namespace):
//
//	xfer recv -listen ADDR      accept one connection, read it to its end
//	xfer send -to ADDR -file F  send F, then wait for the receiver to close
//
// Each prints one line of JSON, {"bytes":N,"sha256":"..."}, on stdout when
// done. recv says "listening on ADDR" on stderr once its socket is bound.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// summary is what each end prints.
type summary struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "recv":
		err = recv(os.Args[2:])
	case "send":
		err = send(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "xfer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: xfer recv -listen ADDR | xfer send -to ADDR -file FILE")
	os.Exit(2)
}

func recv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ExitOnError)
	listen := fs.String("listen", ":7001", "TCP address to listen on")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	fs.Parse(args)
	deadline := time.Now().Add(*timeout)

	ln, err := net.Listen("tcp4", *listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(deadline)
	fmt.Fprintf(os.Stderr, "listening on %v\n", ln.Addr())
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	h := sha256.New()
	n, err := io.Copy(h, conn)
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	return report(n, h.Sum(nil))
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	to := fs.String("to", "", "TCP address of the receiver")
	file := fs.String("file", "", "file to send")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	fs.Parse(args)
	if *to == "" || *file == "" {
		usage()
	}
	deadline := time.Now().Add(*timeout)

	f, err := os.Open(*file)
	if err != nil {
		return err
	}
	defer f.Close()
	conn, err := dial(*to, time.Now().Add(5*time.Second))
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	h := sha256.New()
	n, err := io.Copy(conn, io.TeeReader(f, h))
	if err != nil {
		return fmt.Errorf("after %d bytes: %w", n, err)
	}
	if err := conn.CloseWrite(); err != nil {
		return err
	}
	// The receiver closes once it has read everything: only then is the
	// transfer done.
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return fmt.Errorf("waiting for the receiver to close: %w", err)
	}
	return report(n, h.Sum(nil))
}

// dial connects to addr, retrying until deadline while nobody listens yet.
func dial(addr string, deadline time.Time) (*net.TCPConn, error) {
	for {
		conn, err := net.DialTimeout("tcp4", addr, time.Until(deadline))
		if err == nil {
			return conn.(*net.TCPConn), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		return nil, err
	}
}

func report(n int64, sum []byte) error {
	return json.NewEncoder(os.Stdout).Encode(summary{Bytes: n, SHA256: hex.EncodeToString(sum)})
}
