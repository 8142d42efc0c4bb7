package overlay

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// The stream fallback carries the same sealed datagrams as UDP, each
// framed by a two-byte length, on one libp2p stream per direction. It is
// for peers that UDP cannot reach; TCP inside it suffers from head-of-line
// blocking, which is why UDP is always preferred.

// streamQueueLen bounds the datagrams waiting for a slow stream, so that
// one slow peer cannot stall the node's sending to others.
const streamQueueLen = 512

// streamIdle is how long an outgoing data stream may carry nothing before
// it is closed. Every link starts on the stream and most move to UDP
// within milliseconds; an idle stream would keep a goroutine and a buffer
// at each end for the life of the link. The next datagram opens another.
const streamIdle = 30 * time.Second

// streamReadBuf is the read buffer of an incoming data stream: small,
// since yamux buffers the stream already; it is there so that the
// receiver can tell when nothing more is waiting and flush.
const streamReadBuf = 4 << 10

// streamSender owns the outgoing data stream to one peer.
type streamSender struct {
	o  *Overlay
	id peer.ID

	idleAfter time.Duration // streamIdle; shorter in tests

	mu      sync.Mutex
	queue   chan []byte
	running bool
	closed  bool
}

func newStreamSender(o *Overlay, id peer.ID) *streamSender {
	return &streamSender{o: o, id: id, idleAfter: streamIdle}
}

// send queues a copy of dgram, starting the writer if needed.
func (s *streamSender) send(dgram []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errLinkClosed
	}
	if s.queue == nil {
		// Made on first use: most links never send on the stream, and
		// a node has a sender for every peer. The writer starts after
		// this and the field never changes again.
		s.queue = make(chan []byte, streamQueueLen)
	}
	select {
	case s.queue <- append([]byte(nil), dgram...):
	default:
		s.o.drops.streamQueue.Add(1)
		return errStreamQueueFull
	}
	if !s.running {
		s.running = s.o.spawn(s.write)
	}
	return nil
}

var (
	errStreamQueueFull = errors.New("stream queue full")
	errLinkClosed      = errors.New("link closed")
)

// write drains the queue into one stream until the stream fails, stays
// idle for streamIdle, or the overlay stops; the next send starts a new
// stream.
func (s *streamSender) write() {
	idleExit := false
	defer func() {
		if !idleExit {
			s.mu.Lock()
			s.running = false
			s.mu.Unlock()
		}
	}()
	ctx, cancel := context.WithTimeout(s.o.ctx, dialTimeout)
	st, err := s.o.host.NewStream(ctx, s.id, dataProtocol)
	cancel()
	if err != nil {
		s.o.log.Debug("data stream", "peer", s.id, "err", err)
		s.drain()
		return
	}
	defer st.Close()
	w := bufio.NewWriterSize(st, 64<<10)
	idle := time.NewTimer(s.idleAfter)
	defer idle.Stop()
	for {
		select {
		case <-s.o.ctx.Done():
			return
		case <-idle.C:
			// Give up the stream unless a datagram came in meanwhile:
			// under s.mu no send can queue one unseen.
			s.mu.Lock()
			if len(s.queue) == 0 {
				s.running, idleExit = false, true
				s.mu.Unlock()
				return
			}
			s.mu.Unlock()
			idle.Reset(s.idleAfter)
		case d := <-s.queue:
			if err := writeFrame(w, d); err != nil {
				st.Reset()
				return
			}
			// Flush when nothing else waits, so that batching never
			// delays a lone packet.
			if len(s.queue) == 0 {
				if err := w.Flush(); err != nil {
					st.Reset()
					return
				}
				idle.Reset(s.idleAfter)
			}
		}
	}
}

// drain drops what is queued for a stream that could not open.
func (s *streamSender) drain() {
	for {
		select {
		case <-s.queue:
			s.o.drops.sendFailed.Add(1)
		default:
			return
		}
	}
}

func (s *streamSender) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func writeFrame(w io.Writer, d []byte) error {
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(d)))
	if _, err := w.Write(l[:]); err != nil {
		return err
	}
	_, err := w.Write(d)
	return err
}

// handleDataStream receives datagrams a peer sends over its data stream.
func (o *Overlay) handleDataStream(st network.Stream) {
	defer st.Close()
	p := o.peer(st.Conn().RemotePeer())
	rx := o.cfg.NewReceiver()
	r := bufio.NewReaderSize(st, streamReadBuf)
	var l [2]byte
	for {
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(l[:]))
		if n < HeaderLen+TagLen {
			o.drops.badStream.Add(1)
			st.Reset()
			return
		}
		// The datagram buffer is held only while a datagram is read and
		// handled, not while the stream waits.
		bp := o.routeBufs.Get().(*[]byte)
		buf := *bp
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			o.routeBufs.Put(bp)
			return
		}
		o.receive(rx, nil, buf[:n], PathStream, netip.AddrPort{}, p)
		o.routeBufs.Put(bp)
		if r.Buffered() == 0 {
			rx.Flush()
		}
	}
}
