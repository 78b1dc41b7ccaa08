#!/usr/bin/env python3
"""Relay a pty to swtpm, so that a pty slave can stand in for /dev/tpmrm0.

usage: tpm-bridge.py SWTPM_SOCKET

Connects to `swtpm socket --server type=unixio,path=SWTPM_SOCKET` (raw TPM 2
commands, no framing), then prints the pty slave's path on stdout and relays:
each TPM command written to the slave (header: tag u16, size u32 BE, cc u32)
is forwarded to swtpm, and swtpm's response is written back to the slave in a
single write so that tpm2-tss' tcti-device (poll + one read) sees it whole.
One line per command ("cc=0x... rc=0x...") goes to stderr.

Test-TPM hygiene, outside what the relayed client does: before relaying it
resets the dictionary-attack counter (TPM2_DictionaryAttackLockReset, empty
lockout auth), because every swtpm killed without TPM2_Shutdown counts as a
failure at the next Startup and libtpms locks out after 3; on SIGTERM it sends
TPM2_Shutdown(CLEAR) so that this run does not add to the count.
"""
import os, signal, socket, struct, sys, termios, time

# tag SESSIONS, size 27, cc 0x139, TPM_RH_LOCKOUT, auth area: TPM_RS_PW, empty nonce/attrs/hmac
DA_LOCK_RESET = bytes.fromhex("8002" "0000001b" "00000139" "4000000a" "00000009" "40000009" "0000" "00" "0000")
SHUTDOWN_CLEAR = bytes.fromhex("80010000000c000001450000")

def read_exact(read, n):
    buf = b""
    while len(buf) < n:
        chunk = read(n - len(buf))
        if not chunk:
            sys.exit("tpm-bridge: EOF")
        buf += chunk
    return buf

def make_raw(fd):
    """cfmakeraw(): no echo, no CR/NL mapping, no flow control, no signals, 8 bit."""
    a = termios.tcgetattr(fd)
    a[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP | termios.INPCK
              | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON | termios.IXOFF)
    a[1] &= ~termios.OPOST
    a[2] = (a[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
    a[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    a[6][termios.VMIN], a[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, a)

def main():
    tpm = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + 10
    while True:                      # poll until swtpm accepts connections
        try:
            tpm.connect(sys.argv[1])
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("tpm-bridge: swtpm socket never came up")
            time.sleep(0.01)
    def xfer(cmd):
        tpm.sendall(cmd)
        rsp = read_exact(tpm.recv, 10)
        rsp += read_exact(tpm.recv, struct.unpack(">I", rsp[2:6])[0] - 10)
        print("cc=0x%08x rc=0x%08x" % (struct.unpack(">I", cmd[6:10])[0],
                                       struct.unpack(">I", rsp[6:10])[0]), file=sys.stderr, flush=True)
        return rsp
    print("da-reset:", end=" ", file=sys.stderr)
    xfer(DA_LOCK_RESET)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        relay(xfer)
    finally:
        print("shutdown:", end=" ", file=sys.stderr)
        xfer(SHUTDOWN_CLEAR)

def relay(xfer):
    master, slave = os.openpty()     # we keep `slave` open: no hangup/EIO when clients close
    make_raw(slave)
    print(os.ttyname(slave), flush=True)
    while True:
        cmd = read_exact(lambda n: os.read(master, n), 10)
        size = struct.unpack(">I", cmd[2:6])[0]
        cmd += read_exact(lambda n: os.read(master, n), size - 10)
        view = memoryview(xfer(cmd))
        while view:                  # one write in practice (responses << pty buffer)
            view = view[os.write(master, view):]

if __name__ == "__main__":
    main()
