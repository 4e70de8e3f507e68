package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// The sock_diag netlink interface (linux/sock_diag.h, linux/inet_diag.h).
// The kernel answers a dump request with one inet_diag_msg per socket,
// walking its whole connection hash table for every request; that walk,
// not the sockets, is most of the cost on a host with few connections.
// The original request, TCPDIAG_GETSOCK, dumps IPv4 and IPv6 in one walk;
// SOCK_DIAG_BY_FAMILY needs one request, and one walk, per family. The
// agent asks with the first and falls back to the second on a kernel that
// refuses it.
const (
	tcpDiagGetSock   = 18 // TCPDIAG_GETSOCK
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	// inet_diag_req: family, src_len, dst_len, ext (1 byte each),
	// inet_diag_sockid (48 bytes), states, dbs (u32 each).
	inetDiagReqV1Len       = 60
	inetDiagReqV1StatesOff = 52
	// inet_diag_req_v2: family, protocol, ext, pad (1 byte each), states
	// (u32), inet_diag_sockid (48 bytes).
	inetDiagReqLen = 56
	// inet_diag_msg: family, state, timer, retrans (1 byte each),
	// inet_diag_sockid (48), expires, rqueue, wqueue, uid, inode (u32 each).
	inetDiagMsgLen    = 72
	inetDiagStateOff  = 1
	inetDiagSportOff  = 4 // ports in network byte order
	inetDiagDportOff  = 6
	inetDiagRQueueOff = 56
	inetDiagWQueueOff = 60
	// allTCPStates asks for sockets in every state, 1 to 11.
	allTCPStates = 0xffe
	nlmsgAlign   = 4
	tcpListen    = 10
)

var netlinkBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// netlinkTCPCounts adds every IPv4 and IPv6 TCP socket of the agent's
// network namespace to n, with one request if oneRequest, else with one
// per family.
func netlinkTCPCounts(n *tcpCounts, oneRequest bool) error {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, syscall.NETLINK_INET_DIAG)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer syscall.Close(fd)
	bp := netlinkBufs.Get().(*[]byte)
	defer netlinkBufs.Put(bp)
	if oneRequest {
		return netlinkDump(fd, *bp, inetDiagRequestV1(1), n)
	}
	for i, family := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		err := netlinkDump(fd, *bp, inetDiagRequest(family, uint32(i+1)), n)
		// A kernel without IPv6 has no AF_INET6 sockets to dump.
		if family == syscall.AF_INET6 && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.EAFNOSUPPORT)) {
			err = nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// netlinkDump sends one dump request and adds the sockets of the answer.
func netlinkDump(fd int, buf, req []byte, n *tcpCounts) error {
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	for {
		m, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		done, err := addInetDiagMsgs(n, buf[:m])
		if err != nil || done {
			return err
		}
	}
}

func netlinkHeader(b []byte, typ uint16, seq uint32) {
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	ne.PutUint32(b[8:], seq)
}

// inetDiagRequestV1 is a TCPDIAG_GETSOCK dump request for every TCP
// socket, IPv4 and IPv6: the kernel reads it with the family unspecified.
func inetDiagRequestV1(seq uint32) []byte {
	b := make([]byte, syscall.SizeofNlMsghdr+inetDiagReqV1Len)
	netlinkHeader(b, tcpDiagGetSock, seq)
	r := b[syscall.SizeofNlMsghdr:]
	r[0] = syscall.AF_INET
	binary.NativeEndian.PutUint32(r[inetDiagReqV1StatesOff:], allTCPStates)
	return b
}

// inetDiagRequest is a SOCK_DIAG_BY_FAMILY dump request for every TCP
// socket of family.
func inetDiagRequest(family uint8, seq uint32) []byte {
	b := make([]byte, syscall.SizeofNlMsghdr+inetDiagReqLen)
	netlinkHeader(b, sockDiagByFamily, seq)
	r := b[syscall.SizeofNlMsghdr:]
	r[0] = family
	r[1] = syscall.IPPROTO_TCP
	binary.NativeEndian.PutUint32(r[4:], allTCPStates)
	return b
}

// addInetDiagMsgs adds the sockets in one netlink datagram to n and says
// whether it ended the dump.
func addInetDiagMsgs(n *tcpCounts, b []byte) (done bool, err error) {
	ne := binary.NativeEndian
	for len(b) >= syscall.SizeofNlMsghdr {
		l := int(ne.Uint32(b[0:]))
		typ := ne.Uint16(b[4:])
		if l < syscall.SizeofNlMsghdr || l > len(b) {
			return false, fmt.Errorf("netlink: message length %d out of range (%d bytes left)", l, len(b))
		}
		data := b[syscall.SizeofNlMsghdr:l]
		switch typ {
		case syscall.NLMSG_DONE:
			return true, nil
		case syscall.NLMSG_ERROR:
			if len(data) < 4 {
				return false, errors.New("netlink: short error message")
			}
			if errno := int32(ne.Uint32(data)); errno != 0 {
				return false, fmt.Errorf("netlink sock_diag: %w", syscall.Errno(-errno))
			}
			return true, nil
		case sockDiagByFamily, tcpDiagGetSock:
			if len(data) < inetDiagMsgLen {
				return false, fmt.Errorf("netlink: inet_diag_msg of %d bytes, want %d", len(data), inetDiagMsgLen)
			}
			state := uint64(data[inetDiagStateOff])
			wq := uint64(ne.Uint32(data[inetDiagWQueueOff:]))
			// For a listening socket sock_diag puts the backlog limit in
			// wqueue, not queued bytes; /proc/net/tcp has 0 there.
			if state == tcpListen {
				wq = 0
			}
			n.add(state, wq, uint64(ne.Uint32(data[inetDiagRQueueOff:])),
				uint64(binary.BigEndian.Uint16(data[inetDiagSportOff:])),
				uint64(binary.BigEndian.Uint16(data[inetDiagDportOff:])))
		}
		next := (l + nlmsgAlign - 1) &^ (nlmsgAlign - 1)
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return false, nil
}
