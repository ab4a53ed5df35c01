#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    warden_fuzz::id_token_and_userinfo::run(data);
});
