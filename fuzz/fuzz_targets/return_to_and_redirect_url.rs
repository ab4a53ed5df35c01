#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_fuzz::return_to_and_redirect_url::run(data);
});
