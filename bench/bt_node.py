#!/usr/bin/python3
"""One BitTorrent node for bench/lab.py, run under Debian's /usr/bin/python3 (python3-libtorrent).

    bt_node.py make  --file BLOB --tracker URL --piece-size BYTES --out X.torrent
    bt_node.py seed  --torrent T --dir D --listen IP:PORT
    bt_node.py leech --torrent T --dir D --listen IP:PORT

DHT, LSD, UPnP and NAT-PMP are off; the only way to find peers is the lab's tracker.
A ``leech`` node loads the torrent paused, prints ``{"event": "ready"}`` and waits for a
line on stdin; then it resumes, and prints ``{"event": "done", "seconds": S}`` (S counted
from the go line) when it holds every piece. Every node keeps seeding until stdin closes
or it gets SIGTERM, then prints ``{"event": "stats", "uploaded": B, "downloaded": B}``
(payload bytes). Once a second it writes a status line on stderr (the lab's bt-*.log): progress,
payload rates and peers (how many over uTP); tracker replies and error alerts go there too.
"""

import argparse
import json
import os
import select
import signal
import sys
import time

import libtorrent as lt

# peer_info::utp_socket (1 << 17 in libtorrent 2.0); the Python bindings do not export it
UTP_SOCKET = 1 << 17


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def make(args):
    fs = lt.file_storage()
    lt.add_files(fs, args.file)
    t = lt.create_torrent(fs, args.piece_size, flags=lt.create_torrent.v1_only)
    t.add_tracker(args.tracker)
    t.set_creator("p2pdist bench/lab.py")
    lt.set_piece_hashes(t, os.path.dirname(os.path.abspath(args.file)))
    data = lt.bencode(t.generate())
    with open(args.out, "wb") as fh:
        fh.write(data)
    info = lt.torrent_info(args.out)
    emit(event="made", info_hash=str(info.info_hashes().v1))


def session(listen, tcp_only=False):
    extra = {"enable_outgoing_utp": False, "enable_incoming_utp": False} if tcp_only else {}
    s = lt.session({**extra,
        "listen_interfaces": listen,
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True, "announce_to_all_tiers": True,
        "outgoing_interfaces": listen.rsplit(":", 1)[0],
    })
    return s


def run(args, seed):
    s = session(args.listen, args.tcp_only)
    info = lt.torrent_info(args.torrent)
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = args.dir
    if seed:
        params.flags |= lt.torrent_flags.seed_mode
    else:
        params.flags |= lt.torrent_flags.paused
        params.flags &= ~lt.torrent_flags.auto_managed
    h = s.add_torrent(params)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("now", True))
    if not seed:
        emit(event="ready")
        line = sys.stdin.readline()
        if not line:
            return
        t0 = time.monotonic()
        h.resume()
        h.force_reannounce()
        done = False
    else:
        emit(event="ready")
        done = True
        t0 = time.monotonic()
    sys.stderr.write(f"bt_node: {'seed' if seed else 'leech'} {args.listen} "
                     f"{'TCP only' if args.tcp_only else 'uTP and TCP'}\n")
    next_log = 0.0
    while not stop["now"]:
        st = h.status()
        if time.monotonic() >= next_log:
            next_log = time.monotonic() + 1.0
            utp = sum(1 for p in h.get_peer_info() if p.flags & UTP_SOCKET)
            sys.stderr.write(f"bt_node: t={time.monotonic() - t0:.1f} {st.progress * 100:.1f}% "
                             f"down {st.download_payload_rate * 8 / 1e6:.1f} up {st.upload_payload_rate * 8 / 1e6:.1f} Mbit/s "
                             f"peers {st.num_peers} (uTP {utp})\n")
            sys.stderr.flush()
        if not done and st.is_seeding:
            done = True
            emit(event="done", seconds=round(time.monotonic() - t0, 3))
        r, _, _ = select.select([sys.stdin], [], [], 0.05)
        if r and not sys.stdin.readline():
            break
        for a in s.pop_alerts():
            if a.category() & lt.alert.category_t.error_notification or isinstance(a, lt.tracker_reply_alert):
                sys.stderr.write(f"bt_node: {a.message()}\n")
    st = h.status()
    emit(event="stats", uploaded=st.total_payload_upload, downloaded=st.total_payload_download,
         seeding=st.is_seeding)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["make", "seed", "leech"])
    p.add_argument("--file")
    p.add_argument("--tracker")
    p.add_argument("--piece-size", type=int, default=4 * 1024 * 1024)
    p.add_argument("--out")
    p.add_argument("--torrent")
    p.add_argument("--dir")
    p.add_argument("--listen")
    p.add_argument("--tcp-only", action="store_true", help="no uTP: TCP peer connections only")
    args = p.parse_args()
    if args.mode == "make":
        make(args)
    else:
        run(args, args.mode == "seed")


if __name__ == "__main__":
    main()
