//! Reading tensors back to the host. Decode loops are written once, as `async` functions over a
//! [`ReadMode`]: natively they run with blocking reads and are driven to completion by
//! [`ready`] (they never wait); in the browser WebGPU cannot block, so the same loops await
//! burn's `into_data_async`.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use burn::prelude::*;
use burn::tensor::{BasicOps, Element, TensorData};

use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// `into_data()`: blocks until the device is done.
    Blocking,
    /// `into_data_async().await`: yields to the caller's executor (the browser's event loop).
    Async,
}

pub(crate) async fn read<B: Backend, const D: usize, K>(tensor: Tensor<B, D, K>, mode: ReadMode) -> Result<TensorData>
where
    K: BasicOps<B>,
    K::Elem: Element,
{
    match mode {
        ReadMode::Blocking => Ok(tensor.into_data()),
        ReadMode::Async => tensor.into_data_async().await.map_err(|e| Error::Other(format!("reading a tensor: {e:?}"))),
    }
}

/// Runs a future that never waits (a decode loop in [`ReadMode::Blocking`]) to its end.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("a blocking decode loop waited"),
    }
}
