// placeholder: replaced by the shell
int placeholder_unused_symbol = 0;
