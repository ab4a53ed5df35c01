#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_fuzz::app_cookies_and_callback::run(data);
});
