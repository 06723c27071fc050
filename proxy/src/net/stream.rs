//! The byte streams pgdual speaks the protocol over: a client's (plain TCP or TLS) and a
//! server's (TCP, Unix socket or TLS), opened the one way every connection to legacy or new
//! is opened ([`open`]). Each enum forwards the tokio I/O traits to its variant.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::net::tls::{self, Negotiated, StartTlsError, TlsTarget};

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A connection to a PostgreSQL server.
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),+ }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $($ty::$variant(s) => s.is_write_vectored(),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
        }
    };
}

delegate_io!(ClientStream { Plain, Tls });
delegate_io!(ServerStream { Tcp, Unix, Tls });

/// Why a server stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] StartTlsError),
}

/// The socket path of a Unix-socket `host` (a directory, as in libpq).
pub fn socket_path(host: &str, port: u16) -> Option<std::path::PathBuf> {
    host.starts_with('/')
        .then(|| std::path::Path::new(host).join(format!(".s.PGSQL.{port}")))
}

/// `host:port`, or the socket path for a Unix socket directory.
pub fn display_addr(host: &str, port: u16) -> String {
    match socket_path(host, port) {
        Some(p) => p.display().to_string(),
        None => format!("{host}:{port}"),
    }
}

/// A plain connection: the Unix socket, or TCP with Nagle off.
pub async fn open_plain(host: &str, port: u16) -> io::Result<ServerStream> {
    if let Some(path) = socket_path(host, port) {
        return Ok(ServerStream::Unix(UnixStream::connect(&path).await?));
    }
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(ServerStream::Tcp(tcp))
}

/// Opens a connection to a server and negotiates TLS as `tls` says (`config` is its rustls
/// side, `None` for plaintext; Unix sockets are never encrypted).
pub async fn open(
    host: &str,
    port: u16,
    tls: &TlsTarget,
    config: Option<&Arc<rustls::ClientConfig>>,
) -> Result<ServerStream, OpenError> {
    let tcp = match open_plain(host, port).await? {
        ServerStream::Tcp(tcp) => tcp,
        other => return Ok(other),
    };
    let Some(config) = config else {
        return Ok(ServerStream::Tcp(tcp));
    };
    match tls::start_tls(tcp, tls.mode, config, &tls.server_name).await? {
        Negotiated::Plain(tcp) => Ok(ServerStream::Tcp(tcp)),
        Negotiated::Tls(tls) => Ok(ServerStream::Tls(tls)),
    }
}

impl ServerStream {
    /// Reads the socket itself, under TLS too: used only to see whether an idle connection
    /// got anything (then it is dropped, so bytes taken from under TLS do not matter).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
            ServerStream::Tls(s) => s.get_ref().0.try_read(buf),
        }
    }

    /// Writes what the socket takes now, without waiting; under TLS, `buf` then a
    /// close_notify, encrypted.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            ServerStream::Tcp(s) => s.try_write(buf).map(drop),
            ServerStream::Unix(s) => s.try_write(buf).map(drop),
            ServerStream::Tls(s) => {
                use std::io::Write;
                let (tcp, conn) = s.get_mut();
                conn.writer().write_all(buf)?;
                conn.send_close_notify();
                struct NonBlocking<'a>(&'a TcpStream);
                impl Write for NonBlocking<'_> {
                    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                        self.0.try_write(b)
                    }
                    fn flush(&mut self) -> io::Result<()> {
                        Ok(())
                    }
                }
                while conn.wants_write() {
                    conn.write_tls(&mut NonBlocking(tcp))?;
                }
                Ok(())
            }
        }
    }
}
