//! Feeding a command's stdin and draining its stdout and stderr at the same time.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::output::{Output, Stream};

/// Write `input` to `stdin` (then close it) while streaming both outputs into `out`. A command
/// that exits without reading its stdin is not an error.
pub(crate) async fn pump<W, O, E>(
    stdin: Option<W>,
    input: Option<&[u8]>,
    mut stdout: O,
    mut stderr: E,
    out: &mut Output<'_>,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let write = async move {
        let Some(mut w) = stdin else {
            return Ok(());
        };
        let written = match input {
            Some(bytes) => w.write_all(bytes).await,
            None => Ok(()),
        };
        let closed = w.shutdown().await;
        drop(w);
        match written.and(closed) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    };
    let read = async {
        let mut a = vec![0u8; 16 * 1024];
        let mut b = vec![0u8; 16 * 1024];
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut a), if out_open => match n? {
                    0 => out_open = false,
                    n => out.push(Stream::Stdout, &a[..n]),
                },
                n = stderr.read(&mut b), if err_open => match n? {
                    0 => err_open = false,
                    n => out.push(Stream::Stderr, &b[..n]),
                },
            }
        }
        out.finish();
        Ok::<(), std::io::Error>(())
    };
    let (w, r) = tokio::join!(write, read);
    r?;
    w
}
