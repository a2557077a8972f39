//! The floor's control connection: where the load tool's publisher (`--publish floor`) sends its
//! messages, one per line, each the exact text of the frame to deliver (the `metrics` frame a
//! worker would write, stamped by the tool). The floor neither parses nor checks it: it frames
//! each line once and passes the frame to every fan-out thread.
//!
//! The protocol is the whole contract between the tool and the floor: UTF-8 lines ending in
//! `\n`; JSON as serde writes it holds no raw newline. One connection at a time, read on a
//! thread of its own (blocking reads and blocking hand-overs, bounded by the fan-out threads'
//! queues, so a floor that falls behind slows the publisher, never drops a message).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use crate::fan_out::{FanOut, FanOutEnded};
use crate::frame::text_frame;

/// The read buffer of the control connection (a line is a few hundred bytes).
const READ_BUFFER: usize = 64 * 1024;

/// Serves control connections one after the other, until a fan-out thread has ended.
pub fn serve(listener: &TcpListener, fan_outs: &[FanOut]) -> Result<(), FanOutEnded> {
    for connection in listener.incoming() {
        match connection {
            Ok(connection) => relay(connection, fan_outs)?,
            Err(error) => eprintln!("floor: control accept failed: {error}"),
        }
    }
    Ok(())
}

/// Delivers every line of `connection` until it ends.
fn relay(connection: TcpStream, fan_outs: &[FanOut]) -> Result<(), FanOutEnded> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, connection);
    let mut line = String::new();
    let mut relayed = 0;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                eprintln!("floor: control connection failed: {error}");
                break;
            }
        }
        let text = line.trim_end_matches('\n');
        if text.is_empty() {
            continue;
        }
        let frame = text_frame(text);
        for fan_out in fan_outs {
            fan_out.deliver(Arc::clone(&frame))?;
        }
        relayed += 1;
    }
    if relayed > 0 {
        eprintln!("floor: relayed {relayed} messages");
    }
    Ok(())
}
