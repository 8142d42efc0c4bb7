// Command udpgso sends and checks UDP datagrams for the integration tests.
// send hands the kernel buffers of several datagrams at once with
// UDP_SEGMENT (UDP segmentation offload, USO), as QUIC stacks do, so that
// a TAP with offloads gets each buffer as one large frame to cut up; recv
// checks that every datagram arrives on its own, whole and unaltered. It
// runs inside a VM (a network namespace):
//
//	udpgso recv -listen ADDR [-expect N] [-idle D]
//	udpgso send -to ADDR [-size S] [-segs K] [-last L] [-buffers B] [-interval D]
//
// Every datagram carries its sequence number, its own length and a SHA-256
// of both and of its pseudo-random payload, so the receiver can check it
// alone: a datagram cut in the wrong place, or two glued together, fails.
// Each prints one line of JSON on stdout when done; recv says "listening
// on ADDR" on stderr once its socket is bound.
package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// A datagram: [seq uint64][length uint16][payload][SHA-256 of all before].
const (
	lenOff  = 8
	dataOff = 10
	sumLen  = sha256.Size
	minLen  = dataOff + sumLen
	maxLen  = 65507
)

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
		fmt.Fprintf(os.Stderr, "udpgso %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: udpgso recv -listen ADDR [flags] | udpgso send -to ADDR [flags]")
	os.Exit(2)
}

// sendSummary is what send prints.
type sendSummary struct {
	Buffers   int  `json:"buffers"`
	Datagrams int  `json:"datagrams"`
	Bytes     int  `json:"bytes"`
	USO       bool `json:"uso"` // sent with UDP_SEGMENT
}

func send(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	to := fs.String("to", "", "UDP address of the receiver")
	size := fs.Int("size", 1200, "datagram size (the UDP_SEGMENT segment size)")
	segs := fs.Int("segs", 20, "datagrams per buffer; 1 sends each on its own, without UDP_SEGMENT")
	last := fs.Int("last", 0, "size of each buffer's last datagram (default: -size)")
	buffers := fs.Int("buffers", 100, "buffers to send")
	interval := fs.Duration("interval", 2*time.Millisecond, "pause between buffers")
	fs.Parse(args)
	if *last == 0 {
		*last = *size
	}
	switch {
	case *to == "":
		usage()
	case *size < minLen || *size > maxLen || *last < minLen || *last > *size:
		return fmt.Errorf("sizes %d and %d: want %d <= last <= size <= %d", *size, *last, minLen, maxLen)
	case *segs < 1 || (*segs-1)**size+*last > maxLen:
		return fmt.Errorf("%d datagrams of %d bytes do not fit one UDP send", *segs, *size)
	}
	raddr, err := net.ResolveUDPAddr("udp4", *to)
	if err != nil {
		return err
	}
	conn, err := net.DialUDP("udp4", nil, raddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	uso := *segs > 1
	if uso {
		if err := setSegmentSize(conn, *size); err != nil {
			return err
		}
	}

	buf := make([]byte, (*segs-1)**size+*last)
	s := sendSummary{USO: uso}
	for i := range *buffers {
		for j := range *segs {
			n := *size
			if j == *segs-1 {
				n = *last
			}
			fill(buf[j**size:][:n], uint64(i**segs+j))
		}
		if uso {
			// One send, several datagrams: no fallback, the point is USO.
			if _, err := conn.Write(buf); err != nil {
				return fmt.Errorf("UDP_SEGMENT send of %d bytes: %w", len(buf), err)
			}
		} else if _, err := conn.Write(buf[:*last]); err != nil {
			return err
		}
		s.Buffers++
		s.Datagrams += *segs
		s.Bytes += len(buf)
		time.Sleep(*interval)
	}
	return json.NewEncoder(os.Stdout).Encode(s)
}

// setSegmentSize has the kernel cut every send longer than size into
// datagrams of size bytes (UDP_SEGMENT).
func setSegmentSize(conn *net.UDPConn, size int) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_UDP, unix.UDP_SEGMENT, size)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setsockopt UDP_SEGMENT: %w", serr)
	}
	return nil
}

// fill writes datagram seq into d: its header, a payload derived from seq,
// and the checksum.
func fill(d []byte, seq uint64) {
	binary.BigEndian.PutUint64(d, seq)
	binary.BigEndian.PutUint16(d[lenOff:], uint16(len(d)))
	x := seq*0x9e3779b97f4a7c15 | 1
	payload := d[dataOff : len(d)-sumLen]
	for i := range payload {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		payload[i] = byte(x)
	}
	sum := sha256.Sum256(d[:len(d)-sumLen])
	copy(d[len(d)-sumLen:], sum[:])
}

// intact reports whether d is a whole datagram as fill made it, and its
// sequence number.
func intact(d []byte) (uint64, bool) {
	if len(d) < minLen || int(binary.BigEndian.Uint16(d[lenOff:])) != len(d) {
		return 0, false
	}
	sum := sha256.Sum256(d[:len(d)-sumLen])
	if string(sum[:]) != string(d[len(d)-sumLen:]) {
		return 0, false
	}
	return binary.BigEndian.Uint64(d), true
}

// recvSummary is what recv prints.
type recvSummary struct {
	Datagrams  int `json:"datagrams"` // all that arrived
	Distinct   int `json:"distinct"`  // intact, with distinct sequence numbers
	Duplicates int `json:"duplicates"`
	Corrupt    int `json:"corrupt"` // wrong length, or content altered
	Bytes      int `json:"bytes"`
	MaxSize    int `json:"max_size"`
	// Sizes counts the datagrams of each size that arrived.
	Sizes map[string]int `json:"sizes"`
}

func recv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ExitOnError)
	listen := fs.String("listen", ":7002", "UDP address to listen on")
	expect := fs.Int("expect", 0, "stop once this many distinct datagrams arrived (0: no limit)")
	idle := fs.Duration("idle", 2*time.Second, "stop when nothing arrived for this long after the first datagram")
	timeout := fs.Duration("timeout", 30*time.Second, "stop after this long")
	fs.Parse(args)
	end := time.Now().Add(*timeout)

	laddr, err := net.ResolveUDPAddr("udp4", *listen)
	if err != nil {
		return err
	}
	conn, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetReadBuffer(8 << 20)
	fmt.Fprintf(os.Stderr, "listening on %v\n", conn.LocalAddr())

	s := recvSummary{Sizes: make(map[string]int)}
	seen := make(map[uint64]bool)
	buf := make([]byte, 65536)
	for *expect == 0 || s.Distinct < *expect {
		deadline := end
		if t := time.Now().Add(*idle); s.Datagrams > 0 && t.Before(end) {
			deadline = t
		}
		conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			return err
		}
		d := buf[:n]
		s.Datagrams++
		s.Bytes += n
		s.MaxSize = max(s.MaxSize, n)
		s.Sizes[strconv.Itoa(n)]++
		seq, ok := intact(d)
		switch {
		case !ok:
			s.Corrupt++
		case seen[seq]:
			s.Duplicates++
		default:
			seen[seq] = true
			s.Distinct++
		}
	}
	return json.NewEncoder(os.Stdout).Encode(s)
}
