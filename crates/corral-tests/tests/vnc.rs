//! The graphical console: a real test guest's VGA screen, read through the daemon's
//! websocket with a small RFB client written here (no VNC library, no mock).

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use corral_tests::{Daemon, BOOT};

/// A minimal websocket client over the daemon's Unix socket: binary frames out (masked,
/// as clients must), and the server's binary frames read back as one byte stream.
struct Ws {
    s: UnixStream,
    pending: Vec<u8>,
}

impl Ws {
    /// Upgrades `path`; returns the HTTP status line and headers on refusal.
    fn open(d: &Daemon, path: &str) -> Result<Ws, String> {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: binary\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-protocol: binary"),
            "subprotocol not accepted:\n{head}"
        );
        Ok(Ws {
            s,
            pending: Vec::new(),
        })
    }

    fn send(&mut self, payload: &[u8]) {
        let mut frame = vec![0x82u8];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&frame).unwrap();
    }

    /// Reads one server frame's payload into `pending`.
    fn read_frame(&mut self) {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h).unwrap();
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.s.read_exact(&mut b).unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                self.s.read_exact(&mut b).unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.s.read_exact(&mut payload).unwrap();
        assert_ne!(opcode, 8, "server closed the websocket");
        if opcode == 2 || opcode == 0 {
            self.pending.extend(payload);
        }
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.pending.len() < n {
            self.read_frame();
        }
        self.pending.drain(..n).collect()
    }

    fn u8(&mut self) -> u8 {
        self.read_exact(1)[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.read_exact(2).try_into().unwrap())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.read_exact(4).try_into().unwrap())
    }
}

/// An RFB session after the handshake: the framebuffer's size and bytes per pixel.
struct Rfb {
    ws: Ws,
    width: u16,
    height: u16,
    bpp: usize,
    name: String,
}

impl Rfb {
    /// RFB 3.8, security type None, shared ClientInit, then ServerInit.
    fn connect(d: &Daemon, vm: &str) -> Rfb {
        let mut ws = Ws::open(d, &format!("/api/v1/vms/{vm}/vnc")).unwrap();
        let version = ws.read_exact(12);
        assert_eq!(&version[..4], b"RFB ", "not an RFB server: {version:?}");
        ws.send(b"RFB 003.008\n");
        let n = ws.u8() as usize;
        assert!(n > 0, "server refused the connection");
        let types = ws.read_exact(n);
        assert!(types.contains(&1), "security None not offered: {types:?}");
        ws.send(&[1]);
        assert_eq!(ws.u32(), 0, "security handshake failed");
        ws.send(&[1]); // ClientInit: shared
        let width = ws.u16();
        let height = ws.u16();
        let format = ws.read_exact(16);
        let name_len = ws.u32() as usize;
        let name = String::from_utf8_lossy(&ws.read_exact(name_len)).into_owned();
        // Raw encoding only, so every update is plain pixels.
        ws.send(&[2, 0, 0, 1, 0, 0, 0, 0]);
        Rfb {
            ws,
            width,
            height,
            bpp: format[0] as usize / 8,
            name,
        }
    }

    /// Asks for the whole screen and returns how many pixel bytes are non-zero.
    fn lit_bytes(&mut self) -> usize {
        let [w0, w1] = self.width.to_be_bytes();
        let [h0, h1] = self.height.to_be_bytes();
        self.ws.send(&[3, 0, 0, 0, 0, 0, w0, w1, h0, h1]);
        loop {
            let kind = self.ws.u8();
            match kind {
                0 => break,
                2 => continue, // Bell
                3 => {
                    self.ws.read_exact(3);
                    let len = self.ws.u32() as usize;
                    self.ws.read_exact(len);
                }
                other => panic!("unexpected RFB server message {other}"),
            }
        }
        self.ws.read_exact(1);
        let rects = self.ws.u16();
        let mut lit = 0;
        for _ in 0..rects {
            let _xy = self.ws.read_exact(4);
            let w = self.ws.u16() as usize;
            let h = self.ws.u16() as usize;
            let encoding = self.ws.u32();
            assert_eq!(encoding, 0, "asked for raw only");
            let pixels = self.ws.read_exact(w * h * self.bpp);
            lit += pixels.iter().filter(|b| **b != 0).count();
        }
        lit
    }
}

fn wait_screen_drawn(rfb: &mut Rfb) -> usize {
    let deadline = Instant::now() + BOOT;
    loop {
        let lit = rfb.lit_bytes();
        if lit > 0 {
            return lit;
        }
        assert!(Instant::now() < deadline, "the VGA screen stayed black");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_vga_screen_is_readable_over_the_websocket_by_several_viewers() {
    let mut d = Daemon::start();
    d.define("g1", &["--memory", "256M"]);

    // Not running: 409, and no socket is left behind.
    let refused = Ws::open(&d, "/api/v1/vms/g1/vnc").err().unwrap();
    assert!(refused.starts_with("HTTP/1.1 409"), "{refused}");
    let missing = Ws::open(&d, "/api/v1/vms/nope/vnc").err().unwrap();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    d.start_and_wait("g1");
    let uuid = d.vm("g1")["spec"]["uuid"].as_str().unwrap().to_string();
    let sock = d.state_dir().join("run").join(&uuid).join("vnc.sock");
    assert!(sock.exists(), "no {}", sock.display());

    let mut one = Rfb::connect(&d, "g1");
    assert!(
        one.width >= 320 && one.height >= 200,
        "{}x{}",
        one.width,
        one.height
    );
    assert!(one.name.contains("g1"), "desktop name {:?}", one.name);
    let lit = wait_screen_drawn(&mut one);
    assert!(lit > 100, "only {lit} lit bytes");

    // A second viewer at the same time (QEMU's clients are shared).
    let mut two = Rfb::connect(&d, "g1");
    assert_eq!((two.width, two.height), (one.width, one.height));
    assert!(two.lit_bytes() > 0);
    assert!(one.lit_bytes() > 0, "first viewer cut off by the second");
    drop(two);
    drop(one);

    let deadline = Instant::now() + Duration::from_secs(10);
    // The Unix socket's caller is named by its uid.
    let closed = |d: &Daemon| {
        d.events("g1")
            .lines()
            .filter(|l| l.contains("graphical console of uid:0 closed"))
            .count()
    };
    while closed(&d) < 2 {
        assert!(Instant::now() < deadline, "{}", d.events("g1"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d
        .events("g1")
        .contains("\"console\": \"graphical console opened by uid:0\""));

    // A VM re-attached by a restarted daemon keeps its graphical console.
    d.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.corral(&["show", "g1"]).status.code() != Some(0) {
        assert!(Instant::now() < deadline, "daemon did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut again = Rfb::connect(&d, "g1");
    assert!(again.lit_bytes() > 0);
    drop(again);

    d.ok(&["stop", "g1", "--force"]);
    assert!(!sock.exists(), "vnc.sock left after stop");
}
