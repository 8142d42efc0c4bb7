package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// PingResult is the summary of a `ping` run.
type PingResult struct {
	Transmitted, Received int
	// AvgRTTMs is the average round trip in milliseconds; 0 when no reply came.
	AvgRTTMs float64
}

var (
	pingCountRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	pingRTTRE   = regexp.MustCompile(`= ([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+) ms`)
)

// ParsePing reads the summary lines of iputils ping's output.
func ParsePing(out string) (PingResult, error) {
	var r PingResult
	m := pingCountRE.FindStringSubmatch(out)
	if m == nil {
		return r, errors.New("ping: no summary in output")
	}
	var err error
	if r.Transmitted, err = strconv.Atoi(m[1]); err != nil {
		return r, fmt.Errorf("ping: transmitted: %w", err)
	}
	if r.Received, err = strconv.Atoi(m[2]); err != nil {
		return r, fmt.Errorf("ping: received: %w", err)
	}
	if m := pingRTTRE.FindStringSubmatch(out); m != nil {
		if r.AvgRTTMs, err = strconv.ParseFloat(m[2], 64); err != nil {
			return r, fmt.Errorf("ping: rtt: %w", err)
		}
	}
	return r, nil
}

// Ping runs `ping -q args... addr` in the VM and parses its summary. A run
// in which replies went missing is no error; one with no summary is.
func (vm *VM) Ping(ctx context.Context, addr string, args ...string) (PingResult, error) {
	cmdArgs := append(append([]string{"ping", "-q"}, args...), addr)
	out, err := vm.Command(ctx, cmdArgs...).CombinedOutput()
	r, perr := ParsePing(string(out))
	if perr != nil {
		return r, fmt.Errorf("vm %s: %s: %w: %s", vm.name, strings.Join(cmdArgs, " "), errors.Join(err, perr), strings.TrimSpace(string(out)))
	}
	return r, nil
}

// WaitReachable pings addr from the VM once a second until a reply comes
// back or ctx ends.
func (vm *VM) WaitReachable(ctx context.Context, addr string) error {
	for {
		r, err := vm.Ping(ctx, addr, "-c", "1", "-W", "1")
		if err == nil && r.Received > 0 {
			return nil
		}
		if err == nil {
			err = errors.New("no reply")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: %s unreachable: %w (last: %v)", vm.name, addr, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// IperfResult is what the receiver of an iperf3 test got, and what the
// sender sent.
type IperfResult struct {
	Bytes         uint64 // received
	SentBytes     uint64
	BitsPerSecond float64
	Seconds       float64
	// Retransmits is the sender's TCP retransmission count.
	Retransmits int
}

// ParseIperf3 reads `iperf3 -J` output: end.sum_received, and the
// sender's bytes and retransmits.
func ParseIperf3(data []byte) (IperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumReceived *struct {
				Seconds       float64 `json:"seconds"`
				Bytes         uint64  `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			SumSent struct {
				Bytes       uint64 `json:"bytes"`
				Retransmits int    `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return IperfResult{}, fmt.Errorf("iperf3 -J: %w", err)
	}
	if doc.Error != "" {
		return IperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	if doc.End.SumReceived == nil {
		return IperfResult{}, errors.New("iperf3 -J: no end.sum_received")
	}
	s := doc.End.SumReceived
	return IperfResult{Bytes: s.Bytes, BitsPerSecond: s.BitsPerSecond, Seconds: s.Seconds,
		SentBytes: doc.End.SumSent.Bytes, Retransmits: doc.End.SumSent.Retransmits}, nil
}

// StartIperf3Server starts `iperf3 -s` in the VM; with once, it serves a
// single test and exits (-1). Close stops it.
func (vm *VM) StartIperf3Server(once bool) (*Proc, error) {
	args := []string{"iperf3", "-s"}
	if once {
		args = append(args, "-1")
	}
	return vm.Start(args...)
}

// Iperf3 runs an iperf3 client in the VM against addr, `iperf3 -c addr -J
// args...`, and returns what the receiver got. It retries for a few seconds
// while the server is not listening yet.
func (vm *VM) Iperf3(ctx context.Context, addr string, args ...string) (IperfResult, error) {
	cmdArgs := append([]string{"iperf3", "-c", addr, "-J"}, args...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := vm.Command(ctx, cmdArgs...).Output()
		r, perr := ParseIperf3(out)
		if perr == nil {
			return r, nil
		}
		if strings.Contains(perr.Error(), "unable to connect") && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		return r, fmt.Errorf("vm %s: %s: %w", vm.name, strings.Join(cmdArgs, " "), errors.Join(perr, err))
	}
}

// ServerGap reads `iperf3 -J --get-server-output` output of a run against
// a server started with -J and -i: the longest run of the server's
// intervals in which nothing arrived. Its resolution is the interval.
func ServerGap(data []byte) (time.Duration, error) {
	var doc struct {
		Server struct {
			Intervals []struct {
				Sum struct {
					Start, End float64
					Bytes      uint64
				} `json:"sum"`
			} `json:"intervals"`
		} `json:"server_output_json"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return 0, fmt.Errorf("iperf3 -J: %w", err)
	}
	if len(doc.Server.Intervals) == 0 {
		return 0, errors.New("iperf3 -J: no server intervals (start the server with -J, the client with --get-server-output)")
	}
	var longest, run float64
	for _, iv := range doc.Server.Intervals {
		if iv.Sum.Bytes == 0 {
			run += iv.Sum.End - iv.Sum.Start
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	return time.Duration(longest * float64(time.Second)), nil
}
