//! A native stand-in for Envoy's side of the proxy-wasm ABI, so the filter's own code (the
//! SDK's dispatcher, `warden_filter`, `warden_core`) runs in a test binary exactly as it runs
//! in the VM: the host calls are this module's `extern "C"` functions, and the filter's
//! callbacks are the SDK's exported `proxy_on_*` functions. It keeps what a stream needs
//! (headers, bodies, properties, shared data, metrics, call-outs, a local reply) and counts
//! every host call by name, so a test can hold the warm path to its host calls and
//! allocations per request.
//!
//! One host per thread (the SDK's dispatcher is thread-local too): each test thread is a VM.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

// The filter's callbacks, as the SDK exports them (`proxy_wasm::dispatcher`).
extern "C" {
    fn _initialize();
    fn proxy_on_memory_allocate(size: usize) -> *mut u8;
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    fn proxy_on_tick(context_id: u32);
    fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: bool) -> u32;
    fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: bool) -> u32;
    fn proxy_on_http_call_response(
        context_id: u32,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    );
    fn proxy_on_log(context_id: u32);
    fn proxy_on_done(context_id: u32) -> bool;
    fn proxy_on_delete(context_id: u32);
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const CAS_MISMATCH: u32 = 8;
const UNIMPLEMENTED: u32 = 12;

const CONTINUE: u32 = 0;

// Map and buffer types of the ABI.
const REQUEST_HEADERS: u32 = 0;
const REQUEST_TRAILERS: u32 = 1;
const RESPONSE_HEADERS: u32 = 2;
const CALL_RESPONSE_HEADERS: u32 = 6;
const REQUEST_BODY: u32 = 0;
const RESPONSE_BODY: u32 = 1;
const CALL_RESPONSE_BODY: u32 = 4;
const VM_CONFIGURATION: u32 = 6;
const PLUGIN_CONFIGURATION: u32 = 7;

/// A call-out the filter made, until the test answers it.
#[derive(Clone, Debug)]
pub struct CallOut {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A local reply the filter sent.
#[derive(Clone, Debug)]
pub struct LocalReply {
    pub status: u32,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Host {
    pub log_level: u32,
    pub plugin_configuration: Vec<u8>,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub call_response_headers: Vec<(String, String)>,
    pub call_response_body: Vec<u8>,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub shared_data: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub metric_names: Vec<String>,
    pub metric_values: Vec<i64>,
    pub histogram_samples: Vec<u64>,
    pub call_outs: Vec<CallOut>,
    next_token: u32,
    pub local_reply: Option<LocalReply>,
    pub logs: Vec<(u32, String)>,
    pub tick_ms: u32,
    /// Host calls made, by the ABI's name.
    pub calls: BTreeMap<&'static str, u64>,
    /// Added to the real clock: a test moves time on without waiting.
    pub clock_offset_ns: u64,
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host { log_level: 3, ..Host::default() });
}

/// Reads or changes the host's state.
pub fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

// ---------------------------------------------------------------------------------------------
// Allocations the module makes: counted only while the filter's code runs (inside a callback,
// outside the host's own work), as a counter inside the VM would count them. A buffer the host
// hands back is allocated by the module (`proxy_on_memory_allocate`), so it counts.

pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static IN_MODULE: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    let _ = IN_MODULE.try_with(|m| {
        if m.get() {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only
// thread-locals that need no allocation (const-initialised, no destructor).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Allocations the module made on this thread so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(|a| a.get())
}

/// Marks a stretch of code as the module's (a callback) or the host's (a host call).
struct Side(bool);

impl Side {
    fn enter(module: bool) -> Self {
        Side(IN_MODULE.with(|m| m.replace(module)))
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        IN_MODULE.with(|m| m.set(self.0));
    }
}

/// Counts a host call; the host's own work until the guard drops is not the module's.
#[must_use]
fn count(name: &'static str) -> Side {
    let side = Side::enter(false);
    with(|h| *h.calls.entry(name).or_default() += 1);
    side
}

/// Runs filter code (a callback) as the module.
fn module<R>(f: impl FnOnce() -> R) -> R {
    let _side = Side::enter(true);
    f()
}

/// The host calls made so far, by name.
pub fn calls() -> BTreeMap<&'static str, u64> {
    with(|h| h.calls.clone())
}

// ---------------------------------------------------------------------------------------------
// The ABI's memory rules: what the host returns lives in a buffer the module allocated.

unsafe fn give(bytes: &[u8], data: *mut *mut u8, size: *mut usize) {
    if bytes.is_empty() {
        *data = std::ptr::null_mut();
        *size = 0;
        return;
    }
    let buffer = module(|| proxy_on_memory_allocate(bytes.len()));
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buffer, bytes.len());
    *data = buffer;
    *size = bytes.len();
}

unsafe fn take(data: *const u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    std::slice::from_raw_parts(data, size).to_vec()
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The ABI's header map serialization.
pub fn serialize(map: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (n, v) in map {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in map {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

fn deserialize(bytes: &[u8]) -> Vec<(String, String)> {
    let word = |at: usize| -> usize {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
            .unwrap_or(0)
    };
    let n = word(0);
    let mut at = 4 + n * 8;
    let mut out = Vec::new();
    for i in 0..n {
        let (nl, vl) = (word(4 + i * 8), word(8 + i * 8));
        let name = String::from_utf8_lossy(&bytes[at..at + nl]).into_owned();
        at += nl + 1;
        let value = String::from_utf8_lossy(&bytes[at..at + vl]).into_owned();
        at += vl + 1;
        out.push((name, value));
    }
    out
}

fn map_mut(h: &mut Host, map: u32) -> Option<&mut Vec<(String, String)>> {
    match map {
        REQUEST_HEADERS => Some(&mut h.request_headers),
        RESPONSE_HEADERS => Some(&mut h.response_headers),
        CALL_RESPONSE_HEADERS => Some(&mut h.call_response_headers),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The host calls.

#[no_mangle]
pub unsafe extern "C" fn proxy_log(level: u32, data: *const u8, size: usize) -> u32 {
    let _host = count("proxy_log");
    let line = text(take(data, size));
    with(|h| h.logs.push((level, line)));
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_log_level(level: *mut u32) -> u32 {
    let _host = count("proxy_get_log_level");
    *level = with(|h| h.log_level);
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32 {
    let _host = count("proxy_get_current_time_nanoseconds");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    *time = now + with(|h| h.clock_offset_ns);
    OK
}

#[no_mangle]
pub extern "C" fn proxy_set_tick_period_milliseconds(period: u32) -> u32 {
    let _host = count("proxy_set_tick_period_milliseconds");
    with(|h| h.tick_ms = period);
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_buffer_bytes(
    buffer: u32,
    start: usize,
    max: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    let _host = count("proxy_get_buffer_bytes");
    let bytes = with(|h| match buffer {
        REQUEST_BODY => Some(h.request_body.clone()),
        RESPONSE_BODY => Some(h.response_body.clone()),
        CALL_RESPONSE_BODY => Some(h.call_response_body.clone()),
        PLUGIN_CONFIGURATION => Some(h.plugin_configuration.clone()),
        VM_CONFIGURATION => Some(Vec::new()),
        _ => None,
    });
    let Some(bytes) = bytes else {
        return BAD_ARGUMENT;
    };
    let end = start.saturating_add(max).min(bytes.len());
    let part = bytes.get(start.min(end)..end).unwrap_or_default();
    give(part, data, size);
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_buffer_bytes(
    buffer: u32,
    start: usize,
    size: usize,
    data: *const u8,
    data_size: usize,
) -> u32 {
    let _host = count("proxy_set_buffer_bytes");
    let new = take(data, data_size);
    with(|h| {
        let body = match buffer {
            REQUEST_BODY => &mut h.request_body,
            RESPONSE_BODY => &mut h.response_body,
            _ => return BAD_ARGUMENT,
        };
        let start = start.min(body.len());
        let end = start.saturating_add(size).min(body.len());
        body.splice(start..end, new);
        OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_pairs(
    map: u32,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    let _host = count("proxy_get_header_map_pairs");
    let bytes = with(|h| map_mut(h, map).map(|m| serialize(m)));
    match bytes {
        Some(bytes) => {
            give(&bytes, data, size);
            OK
        }
        None => {
            give(&serialize(&[]), data, size);
            OK
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_header_map_pairs(map: u32, data: *const u8, size: usize) -> u32 {
    let _host = count("proxy_set_header_map_pairs");
    let pairs = deserialize(&take(data, size));
    if map == REQUEST_TRAILERS {
        return OK;
    }
    with(|h| match map_mut(h, map) {
        Some(m) => {
            *m = pairs;
            OK
        }
        None => BAD_ARGUMENT,
    })
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_header_map_value(
    map: u32,
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    let _host = count("proxy_get_header_map_value");
    let key = text(take(key, key_size));
    let value = with(|h| {
        map_mut(h, map).and_then(|m| m.iter().find(|(n, _)| *n == key).map(|(_, v)| v.clone()))
    });
    match value {
        Some(v) => {
            give(v.as_bytes(), data, size);
            OK
        }
        None => NOT_FOUND,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_remove_header_map_value(
    map: u32,
    key: *const u8,
    key_size: usize,
) -> u32 {
    let _host = count("proxy_remove_header_map_value");
    let key = text(take(key, key_size));
    with(|h| {
        if let Some(m) = map_mut(h, map) {
            m.retain(|(n, _)| *n != key);
        }
    });
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_replace_header_map_value(
    map: u32,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    let _host = count("proxy_replace_header_map_value");
    let (key, value) = (text(take(key, key_size)), text(take(value, value_size)));
    with(|h| {
        if let Some(m) = map_mut(h, map) {
            m.retain(|(n, _)| *n != key);
            m.push((key, value));
        }
    });
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_add_header_map_value(
    map: u32,
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    let _host = count("proxy_add_header_map_value");
    let (key, value) = (text(take(key, key_size)), text(take(value, value_size)));
    with(|h| {
        if let Some(m) = map_mut(h, map) {
            m.push((key, value));
        }
    });
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_property(
    path: *const u8,
    path_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
) -> u32 {
    let _host = count("proxy_get_property");
    let path = take(path, path_size);
    match with(|h| h.properties.get(&path).cloned()) {
        Some(v) => {
            give(&v, data, size);
            OK
        }
        None => NOT_FOUND,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_property(
    path: *const u8,
    path_size: usize,
    value: *const u8,
    value_size: usize,
) -> u32 {
    let _host = count("proxy_set_property");
    let (path, value) = (take(path, path_size), take(value, value_size));
    with(|h| h.properties.insert(path, value));
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_shared_data(
    key: *const u8,
    key_size: usize,
    data: *mut *mut u8,
    size: *mut usize,
    cas: *mut u32,
) -> u32 {
    let _host = count("proxy_get_shared_data");
    let key = take(key, key_size);
    match with(|h| h.shared_data.get(&key).cloned()) {
        Some((v, c)) => {
            give(&v, data, size);
            *cas = c;
            OK
        }
        None => NOT_FOUND,
    }
}

#[no_mangle]
pub unsafe extern "C" fn proxy_set_shared_data(
    key: *const u8,
    key_size: usize,
    value: *const u8,
    value_size: usize,
    cas: u32,
) -> u32 {
    let _host = count("proxy_set_shared_data");
    let (key, value) = (take(key, key_size), take(value, value_size));
    with(|h| {
        let current = h.shared_data.get(&key).map(|(_, c)| *c).unwrap_or(0);
        if cas != 0 && cas != current {
            return CAS_MISMATCH;
        }
        h.shared_data.insert(key, (value, current + 1));
        OK
    })
}

#[no_mangle]
pub extern "C" fn proxy_register_shared_queue(_: *const u8, _: usize, _: *mut u32) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_resolve_shared_queue(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_dequeue_shared_queue(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_enqueue_shared_queue(_: u32, _: *const u8, _: usize) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_continue_stream(_stream: u32) -> u32 {
    let _host = count("proxy_continue_stream");
    OK
}

#[no_mangle]
pub extern "C" fn proxy_close_stream(_stream: u32) -> u32 {
    let _host = count("proxy_close_stream");
    OK
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_send_local_response(
    status: u32,
    _details: *const u8,
    _details_size: usize,
    body: *const u8,
    body_size: usize,
    headers: *const u8,
    headers_size: usize,
    _grpc_status: i32,
) -> u32 {
    let _host = count("proxy_send_local_response");
    let reply = LocalReply {
        status,
        body: take(body, body_size),
        headers: deserialize(&take(headers, headers_size)),
    };
    with(|h| h.local_reply = Some(reply));
    OK
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn proxy_http_call(
    upstream: *const u8,
    upstream_size: usize,
    headers: *const u8,
    headers_size: usize,
    body: *const u8,
    body_size: usize,
    _trailers: *const u8,
    _trailers_size: usize,
    _timeout: u32,
    token: *mut u32,
) -> u32 {
    let _host = count("proxy_http_call");
    let call = CallOut {
        token: 0,
        cluster: text(take(upstream, upstream_size)),
        headers: deserialize(&take(headers, headers_size)),
        body: take(body, body_size),
    };
    *token = with(|h| {
        h.next_token += 1;
        let t = h.next_token;
        h.call_outs.push(CallOut { token: t, ..call });
        t
    });
    OK
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_call(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: u32,
    _: *mut u32,
) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn proxy_grpc_stream(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut u32,
) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_grpc_send(_: u32, _: *const u8, _: usize, _: bool) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_grpc_cancel(_: u32) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_grpc_close(_: u32) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_get_status(_: *mut u32, _: *mut *mut u8, _: *mut usize) -> u32 {
    UNIMPLEMENTED
}

thread_local! {
    static EFFECTIVE: Cell<u32> = const { Cell::new(0) };
}

#[no_mangle]
pub extern "C" fn proxy_set_effective_context(context_id: u32) -> u32 {
    let _host = count("proxy_set_effective_context");
    EFFECTIVE.with(|e| e.set(context_id));
    OK
}

#[no_mangle]
pub extern "C" fn proxy_call_foreign_function(
    _: *const u8,
    _: usize,
    _: *const u8,
    _: usize,
    _: *mut *mut u8,
    _: *mut usize,
) -> u32 {
    UNIMPLEMENTED
}

#[no_mangle]
pub extern "C" fn proxy_done() -> u32 {
    let _host = count("proxy_done");
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_define_metric(
    _kind: u32,
    name: *const u8,
    name_size: usize,
    id: *mut u32,
) -> u32 {
    let _host = count("proxy_define_metric");
    let name = text(take(name, name_size));
    *id = with(|h| {
        if let Some(i) = h.metric_names.iter().position(|n| *n == name) {
            return i as u32;
        }
        h.metric_names.push(name);
        h.metric_values.push(0);
        (h.metric_names.len() - 1) as u32
    });
    OK
}

#[no_mangle]
pub unsafe extern "C" fn proxy_get_metric(id: u32, value: *mut u64) -> u32 {
    let _host = count("proxy_get_metric");
    match with(|h| h.metric_values.get(id as usize).copied()) {
        Some(v) => {
            *value = v as u64;
            OK
        }
        None => NOT_FOUND,
    }
}

#[no_mangle]
pub extern "C" fn proxy_record_metric(id: u32, value: u64) -> u32 {
    let _host = count("proxy_record_metric");
    with(|h| {
        if let Some(v) = h.metric_values.get_mut(id as usize) {
            *v = value as i64;
        }
        h.histogram_samples.push(value);
    });
    OK
}

#[no_mangle]
pub extern "C" fn proxy_increment_metric(id: u32, offset: i64) -> u32 {
    let _host = count("proxy_increment_metric");
    with(|h| {
        if let Some(v) = h.metric_values.get_mut(id as usize) {
            *v += offset;
        }
    });
    OK
}

// ---------------------------------------------------------------------------------------------
// Driving the filter as Envoy does.

pub const ROOT: u32 = 1;

/// What one stream's request callbacks returned, and what reached the upstream.
#[derive(Debug)]
pub struct Exchange {
    pub headers_action: u32,
    pub body_action: u32,
    pub local_reply: Option<LocalReply>,
    /// The request headers as the upstream would get them (when not answered locally).
    pub upstream_headers: Vec<(String, String)>,
}

impl Exchange {
    pub fn forwarded(&self) -> bool {
        self.local_reply.is_none() && self.body_action == CONTINUE
    }

    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        self.upstream_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Starts the VM and the plugin with this configuration; false when the filter refused it.
pub fn start(plugin_configuration: &[u8], log_level: u32) -> bool {
    with(|h| {
        h.plugin_configuration = plugin_configuration.to_vec();
        h.log_level = log_level;
    });
    let size = plugin_configuration.len();
    module(|| unsafe { _initialize() });
    // The SDK's panic hook sends the message to the host's log; a test wants it on stderr.
    drop(std::panic::take_hook());
    module(|| unsafe {
        proxy_on_context_create(ROOT, 0);
        proxy_on_vm_start(ROOT, 0) && proxy_on_configure(ROOT, size)
    })
}

/// One tick of the root context, as Envoy's timer fires it.
pub fn tick() {
    module(|| unsafe { proxy_on_tick(ROOT) })
}

/// Answers every call-out made so far with what `answer` gives (status, body), as Envoy
/// delivers answers: to the root context's `on_http_call_response`.
pub fn answer_call_outs(answer: impl Fn(&CallOut) -> (u32, Vec<u8>)) -> usize {
    let calls = with(|h| std::mem::take(&mut h.call_outs));
    for call in &calls {
        let (status, body) = answer(call);
        let size = body.len();
        with(|h| {
            h.call_response_headers = vec![(":status".into(), status.to_string())];
            h.call_response_body = body;
        });
        module(|| unsafe { proxy_on_http_call_response(ROOT, call.token, 1, size, 0) });
    }
    calls.len()
}

/// One HTTP stream through the filter: the request head and body, then (when it was
/// forwarded) the upstream's answer, then the stream's end.
pub fn exchange(
    stream: u32,
    request_headers: &[(&str, &str)],
    request_body: &[u8],
    response_headers: &[(&str, &str)],
    response_body: &[u8],
) -> Exchange {
    let owned = |m: &[(&str, &str)]| -> Vec<(String, String)> {
        m.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let (req_h, resp_h) = (owned(request_headers), owned(response_headers));
    let n = req_h.len();
    with(|h| {
        h.request_headers = req_h;
        h.request_body = request_body.to_vec();
        h.local_reply = None;
    });
    let headers_action = module(|| unsafe {
        proxy_on_context_create(stream, ROOT);
        proxy_on_request_headers(stream, n, false)
    });
    let body_action = if with(|h| h.local_reply.is_none()) {
        let size = request_body.len();
        module(|| unsafe { proxy_on_request_body(stream, size, true) })
    } else {
        CONTINUE
    };
    let local_reply = with(|h| h.local_reply.take());
    let upstream_headers = with(|h| h.request_headers.clone());
    if local_reply.is_none() {
        let m = resp_h.len();
        let size = response_body.len();
        with(|h| {
            h.response_headers = resp_h;
            h.response_body = response_body.to_vec();
        });
        module(|| unsafe {
            proxy_on_response_headers(stream, m, false);
            proxy_on_response_body(stream, size, true);
        });
    }
    module(|| unsafe {
        proxy_on_log(stream);
        proxy_on_done(stream);
        proxy_on_delete(stream);
    });
    Exchange {
        headers_action,
        body_action,
        local_reply,
        upstream_headers,
    }
}
