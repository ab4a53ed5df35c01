#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_fuzz::internal_api_bodies::run(data);
});
